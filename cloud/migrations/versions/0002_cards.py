"""the space-level card directory

Revision ID: 0002
Revises: 0001

`cards`: a card known only by its UID, as a keyed hash, registered to one org per space.
`card_key`: each space's HMAC key for those hashes, sealed under the KEK like a profile's secrets.
`audit_event.card_ref`: the first 8 hex characters of a card's hash, for card events.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "card_key",
        sa.Column("space_id", sa.String(64), sa.ForeignKey("space.id"), primary_key=True),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary, nullable=False),
        sa.Column("key_ct", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_card_key_kek_id", "card_key", ["kek_id"])
    op.create_table(
        "cards",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("space_id", sa.String(64), sa.ForeignKey("space.id"), nullable=False),
        sa.Column("card_hash", sa.String(64), nullable=False),
        sa.Column("org_id", sa.String(64), sa.ForeignKey("org.id"), nullable=False),
        sa.Column("added_at", sa.Float, nullable=False),
        sa.UniqueConstraint("space_id", "card_hash", name="uq_cards_space_hash"),
    )
    op.create_index("ix_cards_org_id", "cards", ["org_id"])
    op.add_column("audit_event", sa.Column("card_ref", sa.String(16), nullable=True))


def downgrade() -> None:
    op.drop_column("audit_event", "card_ref")
    op.drop_table("cards")
    op.drop_table("card_key")
