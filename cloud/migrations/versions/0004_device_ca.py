"""the spaces' device certificate authorities

Revision ID: 0004
Revises: 0003

`space_ca`: each space's device CA (cloud/device_ca.py), its certificate in clear and its P-256
key sealed under the KEK like a profile's secrets. `device_cert`: every certificate a space's CA
issued (serial, device, validity, when revoked, the SHA-256 of its public key): the CRL is read
from it, and a device's first certificate pins the key of all its later ones.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "space_ca",
        sa.Column("space_id", sa.String(64), sa.ForeignKey("space.id"), primary_key=True),
        sa.Column("cert_pem", sa.Text, nullable=False),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary, nullable=False),
        sa.Column("key_ct", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_space_ca_kek_id", "space_ca", ["kek_id"])
    op.create_table(
        "device_cert",
        sa.Column("serial", sa.String(40), primary_key=True),
        sa.Column("space_id", sa.String(64), sa.ForeignKey("space.id"), nullable=False),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("device.id"), nullable=False),
        sa.Column("not_before", sa.Float, nullable=False),
        sa.Column("not_after", sa.Float, nullable=False),
        sa.Column("issued_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("key_sha256", sa.String(64), nullable=False),
    )
    op.create_index("ix_device_cert_device_id", "device_cert", ["device_id"])
    op.create_index("ix_device_cert_space_revoked", "device_cert", ["space_id", "revoked_at"])


def downgrade() -> None:
    op.drop_table("device_cert")
    op.drop_table("space_ca")
