"""Forwarding: forward_sinks (each sink's cursors and lease; it reads command_events of 0003).

Revision ID: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
time = sa.DateTime(timezone=True)


def upgrade():
    op.create_table(
        "forward_sinks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("position_id", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.BigInteger, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("holder", sa.String(128)),
        sa.Column("lease_until", time),
        sa.Column("delivered_at", time),
        sa.Column("last_error", sa.Text),
        sa.Column("error_at", time),
    )


def downgrade():
    op.drop_table("forward_sinks")
