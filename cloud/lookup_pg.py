"""The lookup transaction as one PostgreSQL statement (one round trip, atomic in autocommit).

`DeviceDirectory.lookup` on SQLite runs a read and two inserts in one local transaction; over a
network the same work took six round trips (pool ping, BEGIN, three statements, COMMIT). Here the
device and profile read, the nonce insert, the audit insert and the device's session (and its
anomaly) are data-modifying CTEs of a single statement, so they commit together or not at all,
exactly like the SQLite path. The decisions are
the same, in the same order: unknown device, key changed, revoked, replay, refused, granted.
Both paths run the same tests (tests/cloud run every case on both databases).
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import Engine

LOOKUP_SQL = """
WITH d AS (
    SELECT device.public_key, device.status, org_profile.public_json, org_profile.kek_id,
           org_profile.wrapped_dek, org_profile.secrets_ct, org_profile.seal_version
    FROM device
    LEFT JOIN contract ON contract.space_id = device.space_id AND contract.org_id = %(org_id)s
                          AND contract.status = 'active'
    LEFT JOIN org_profile ON org_profile.org_id = contract.org_id
    WHERE device.id = %(device_id)s
    LIMIT 1
), v AS (
    SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM d) THEN 'unknown-device'
                WHEN %(public_key)s::bytea IS NOT NULL
                     AND (SELECT public_key FROM d) IS DISTINCT FROM %(public_key)s::bytea THEN 'key-changed'
                WHEN (SELECT status FROM d) <> 'active' THEN 'revoked'
           END AS denied
), n AS (
    INSERT INTO request_nonce (device_id, nonce, seen_at)
    SELECT %(device_id)s, %(nonce)s, %(now)s FROM v WHERE v.denied IS NULL
    ON CONFLICT (device_id, nonce) DO NOTHING
    RETURNING nonce
), o AS (
    SELECT COALESCE(v.denied, CASE WHEN NOT EXISTS (SELECT 1 FROM n) THEN 'replay'
                                   WHEN (SELECT secrets_ct FROM d) IS NULL THEN 'refused'
                                   ELSE 'granted' END) AS outcome
    FROM v
), a AS (
    INSERT INTO audit_event (at, device_id, org_id, action, outcome)
    SELECT %(now)s, %(device_id)s, %(audit_org_id)s, 'lookup', o.outcome FROM o
    RETURNING outcome
), prev AS (
    SELECT opened_at FROM device_session WHERE device_id = %(device_id)s AND org_id = %(org_id)s
), s AS (
    INSERT INTO device_session (device_id, org_id, opened_at, source)
    SELECT %(device_id)s, %(org_id)s, %(now)s, %(source)s FROM o WHERE o.outcome = 'granted'
    ON CONFLICT (device_id, org_id) DO UPDATE SET opened_at = EXCLUDED.opened_at, source = EXCLUDED.source
    RETURNING 1
), x AS (
    INSERT INTO audit_event (at, device_id, org_id, action, outcome, source)
    SELECT %(now)s, %(device_id)s, %(audit_org_id)s, 'anomaly', 'second-session', %(source)s
    FROM o, prev WHERE o.outcome = 'granted' AND prev.opened_at > %(now)s - %(open_max)s
    RETURNING 1
)
SELECT a.outcome, d.public_json, d.kek_id, d.wrapped_dek, d.secrets_ct, d.seal_version
FROM a LEFT JOIN d ON a.outcome = 'granted'
"""


class LookupRow(NamedTuple):
    outcome: str  # granted | refused | unknown-device | key-changed | revoked | replay
    public_json: str | None
    kek_id: str | None
    wrapped_dek: bytes | None
    secrets_ct: bytes | None
    seal_version: int | None  # cloud/sealing.py


def run_lookup(engine: Engine, *, device_id: str, nonce: str, org_id: str | None, public_key: bytes | None,
               now: float, source: str = "unknown", open_max_s: float = 12 * 3600.0) -> LookupRow:
    """Decide, spend the nonce and audit in one statement; the profile columns only when granted.
    A granted lookup also opens the device's session with the org, and one it held open already is
    audited `second-session` (cloud/sessions.py), in the same statement (data-modifying CTEs read
    the snapshot before it: `prev` is the session as it was)."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with conn.connection.dbapi_connection.cursor() as cur:
            cur.execute(LOOKUP_SQL, {"device_id": device_id, "nonce": nonce, "now": now, "org_id": org_id or "",
                                     "audit_org_id": org_id, "public_key": public_key, "source": source,
                                     "open_max": open_max_s})
            row = cur.fetchone()
    return LookupRow(*row)
