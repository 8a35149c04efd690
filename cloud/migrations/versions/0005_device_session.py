"""each device's open sessions, one per org

Revision ID: 0005
Revises: 0004

`device_session`: the orgs a device holds a session with, since its granted lookup, until it says
the session ended (`POST /v1/device/sessions/end`; cloud/sessions.py). A granted lookup for an org
the device already holds a session with is a second session with one device identity: audited as
an anomaly (a copy of the device's keys at work beside it).
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_session",
        sa.Column("device_id", sa.String(64), sa.ForeignKey("device.id"), primary_key=True),
        sa.Column("org_id", sa.String(64), primary_key=True),
        sa.Column("opened_at", sa.Float, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("device_session")
