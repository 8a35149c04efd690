"""The directory's tables (SQLAlchemy 2). The schema itself is created by Alembic migrations
(`cloud/migrations`); these classes must match them.

Times are unix seconds (float) so SQLite and PostgreSQL compare them the same way.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ACTIVE, REVOKED, ENDED = "active", "revoked", "ended"


class Base(DeclarativeBase):
    pass


class Space(Base):
    """A coworking space: devices are enrolled into one; contracts tie orgs to it."""
    __tablename__ = "space"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)


class Device(Base):
    """An MFP. Its key pair (Ed25519, or P-256 inside a TPM) was made on the device; only the public
    key is here (32 raw bytes, or a 65-byte uncompressed point)."""
    __tablename__ = "device"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("space.id"), index=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(65))
    status: Mapped[str] = mapped_column(String(16))
    enrolled_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Org(Base):
    __tablename__ = "org"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)


class Contract(Base):
    """An org may use a space's devices while one of its contracts with that space is active."""
    __tablename__ = "contract"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("org.id"))
    space_id: Mapped[str] = mapped_column(ForeignKey("space.id"))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    __table_args__ = (Index("ix_contract_space_org_status", "space_id", "org_id", "status"),)


class OrgProfile(Base):
    """An org's session profile: the wire form without its secrets in `public_json`; the secrets
    encrypted under a per-record data key (`secrets_ct`), that key wrapped by the KEK `kek_id`."""
    __tablename__ = "org_profile"
    org_id: Mapped[str] = mapped_column(ForeignKey("org.id"), primary_key=True)
    public_json: Mapped[str] = mapped_column(Text)
    kek_id: Mapped[str] = mapped_column(String(32), index=True)
    wrapped_dek: Mapped[bytes] = mapped_column(LargeBinary)
    secrets_ct: Mapped[bytes] = mapped_column(LargeBinary)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[float] = mapped_column(Float)
    # 2: the sealed part's associated data binds the public part (cloud/sealing.py); 1: rows sealed
    # before that, refused by lookups until `tenantprint cloud reseal-profiles` re-seals them.
    seal_version: Mapped[int] = mapped_column(Integer, server_default="1")


class EnrolmentToken(Base):
    """A one-time enrolment token; only its SHA-256 is stored."""
    __tablename__ = "enrolment_token"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("space.id"))
    device_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class AuditEvent(Base):
    """Append-only (triggers refuse UPDATE and DELETE)."""
    __tablename__ = "audit_event"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    org_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(32))
    card_ref: Mapped[str | None] = mapped_column(String(16), nullable=True)  # card events: hash prefix
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)  # anomalies: the request's address


class CardKey(Base):
    """A space's HMAC key for card hashes, sealed like a profile's secrets (a data key wrapped by
    the KEK `kek_id`), so a KEK rotation re-wraps it and every stored hash stays valid."""
    __tablename__ = "card_key"
    space_id: Mapped[str] = mapped_column(ForeignKey("space.id"), primary_key=True)
    kek_id: Mapped[str] = mapped_column(String(32), index=True)
    wrapped_dek: Mapped[bytes] = mapped_column(LargeBinary)
    key_ct: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class Card(Base):
    """A card known only by its UID, registered to one org in one space. Only the HMAC-SHA256 of
    its card id under the space's card key is stored, never the id."""
    __tablename__ = "cards"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    space_id: Mapped[str] = mapped_column(ForeignKey("space.id"))
    card_hash: Mapped[str] = mapped_column(String(64))
    org_id: Mapped[str] = mapped_column(ForeignKey("org.id"), index=True)
    added_at: Mapped[float] = mapped_column(Float)
    __table_args__ = (UniqueConstraint("space_id", "card_hash", name="uq_cards_space_hash"),)


class RequestNonce(Base):
    """Nonces seen inside the timestamp window; shared by every API process (replay protection)."""
    __tablename__ = "request_nonce"
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    seen_at: Mapped[float] = mapped_column(Float, index=True)


class RefusalCount(Base):
    """Refused requests whose signature did not verify (or that never got that far: rate limited),
    counted per minute, action, reason and source prefix; never a device or org id (cloud/refusals.py)."""
    __tablename__ = "refusal_count"
    bucket: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    action: Mapped[str] = mapped_column(String(32), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32), primary_key=True)
    source_prefix: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))


class DeviceSource(Base):
    """The source addresses a device's verified, fresh requests came from (cloud/anomalies.py)."""
    __tablename__ = "device_source"
    device_id: Mapped[str] = mapped_column(ForeignKey("device.id"), primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen: Mapped[float] = mapped_column(Float)


class DeviceSession(Base):
    """An org a device holds a session with: from its granted lookup until the device reports the
    session's end (cloud/sessions.py)."""
    __tablename__ = "device_session"
    device_id: Mapped[str] = mapped_column(ForeignKey("device.id"), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    opened_at: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(64))
