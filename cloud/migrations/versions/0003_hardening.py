"""refusal counters, device sources, profiles bound to their public part

Revision ID: 0003
Revises: 0002

`refusal_count`: unauthenticated refusals counted per minute, action, reason and source prefix
(they no longer write one audit row each). `device_source`: the addresses each device's verified
requests came from (a new one is an anomaly). `audit_event.source`: the address of an anomaly.
`org_profile.seal_version`: existing rows are 1 (sealed without their public part; lookups refuse
them until `tenantprint cloud reseal-profiles`), rows sealed from now on are 2.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_COUNT = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "refusal_count",
        sa.Column("bucket", _COUNT, primary_key=True),
        sa.Column("action", sa.String(32), primary_key=True),
        sa.Column("reason", sa.String(32), primary_key=True),
        sa.Column("source_prefix", sa.String(64), primary_key=True),
        sa.Column("count", _COUNT, nullable=False),
    )
    op.create_table(
        "device_source",
        sa.Column("device_id", sa.String(64), sa.ForeignKey("device.id"), primary_key=True),
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("first_seen", sa.Float, nullable=False),
    )
    op.add_column("audit_event", sa.Column("source", sa.String(64), nullable=True))
    op.add_column("org_profile", sa.Column("seal_version", sa.Integer, nullable=False, server_default="1"))


def downgrade() -> None:
    op.drop_column("org_profile", "seal_version")
    op.drop_column("audit_event", "source")
    op.drop_table("device_source")
    op.drop_table("refusal_count")
