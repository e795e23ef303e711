"""Command identity: command_events, the session a command was written on,
known devices and identity conflicts, commit-ordered settings versions, and
why unknown traffic was kept.

Revision ID: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
time = sa.DateTime(timezone=True)


def upgrade():
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
    with op.batch_alter_table("commands") as batch:
        batch.add_column(sa.Column("session", sa.String(160)))
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("settings_seq", sa.BigInteger))
        batch.add_column(sa.Column("known", sa.Boolean))
        batch.add_column(sa.Column("conflict", sa.Text))
        batch.add_column(sa.Column("conflict_at", time))
    op.create_index("ix_devices_settings_seq", "devices", ["settings_seq"])
    with op.batch_alter_table("unknown_frames") as batch:
        batch.add_column(sa.Column("reason", sa.Text))


def downgrade():
    with op.batch_alter_table("unknown_frames") as batch:
        batch.drop_column("reason")
    op.drop_index("ix_devices_settings_seq", "devices")
    with op.batch_alter_table("devices") as batch:
        for name in ("conflict_at", "conflict", "known", "settings_seq"):
            batch.drop_column(name)
    with op.batch_alter_table("commands") as batch:
        batch.drop_column("session")
    op.drop_index("ix_command_events_command", "command_events")
    op.drop_table("command_events")
