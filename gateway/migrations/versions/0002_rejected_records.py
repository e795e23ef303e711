"""Rejected records: what the database refused, kept raw with the reason.

Revision ID: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
time = sa.DateTime(timezone=True)


def upgrade():
    op.create_table(
        "rejected_records",
        sa.Column("id", big_id, primary_key=True, autoincrement=True),
        sa.Column("received_at", time, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("transport", sa.String(8)),
        sa.Column("peer", sa.String(128)),
        sa.Column("protocol", sa.String(32)),
        sa.Column("device_id", sa.Text),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("length", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade():
    op.drop_table("rejected_records")
