"""Forwarding: command_events (read by cursor) and forward_sinks (cursors, lease).

Revision ID: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None

big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
time = sa.DateTime(timezone=True)


def upgrade():
    # command_events is shared with the command queue's migration: whichever
    # runs first creates it.
    if "command_events" not in sa.inspect(op.get_bind()).get_table_names():
        op.create_table(
            "command_events",
            sa.Column("id", big_id, primary_key=True, autoincrement=True),
            sa.Column("command_id", sa.Integer, nullable=False),
            sa.Column("device_id", sa.String(64), nullable=False),
            sa.Column("type", sa.String(32), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("at", time, nullable=False),
            sa.Column("detail", sa.Text),
        )
        op.create_index("ix_command_events_command", "command_events", ["command_id"])
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
