"""The first schema: devices, positions, commands, unknown_frames.

Revision ID: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
time = sa.DateTime(timezone=True)


def upgrade():
    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("protocol", sa.String(32)),
        sa.Column("transport", sa.String(8)),
        sa.Column("first_seen", time),
        sa.Column("last_seen", time),
        sa.Column("last_peer", sa.String(128)),
        sa.Column("settings", json, nullable=False),
        sa.Column("settings_changed", time),
    )
    op.create_index("ix_devices_settings_changed", "devices", ["settings_changed"])
    op.create_table(
        "positions",
        sa.Column("id", big_id, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64)),
        sa.Column("protocol", sa.String(32)),
        sa.Column("time", time),
        sa.Column("server_time", time, nullable=False),
        sa.Column("latitude", sa.Float),
        sa.Column("longitude", sa.Float),
        sa.Column("valid", sa.Boolean, nullable=False),
        sa.Column("speed_kmh", sa.Float),
        sa.Column("course", sa.Float),
        sa.Column("altitude_m", sa.Float),
        sa.Column("alarm", json, nullable=False),
        sa.Column("event", sa.String(64)),
        sa.Column("attributes", json, nullable=False),
        sa.Column("fingerprint", sa.String(32), nullable=False),
        sa.UniqueConstraint("device_id", "fingerprint", name="uq_positions_device_fingerprint"),
    )
    op.create_index("ix_positions_device_time", "positions", ["device_id", "time"])
    op.create_table(
        "commands",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("params", json, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", time, nullable=False),
        sa.Column("expires_at", time),
        sa.Column("sent_at", time),
        sa.Column("confirmed_at", time),
        sa.Column("finished_at", time),
        sa.Column("token", sa.String(64)),
        sa.Column("data", sa.LargeBinary),
        sa.Column("reply", sa.Text),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_commands_device_status", "commands", ["device_id", "status"])
    op.create_index("ix_commands_status", "commands", ["status"])
    op.create_table(
        "unknown_frames",
        sa.Column("id", big_id, primary_key=True, autoincrement=True),
        sa.Column("received_at", time, nullable=False),
        sa.Column("transport", sa.String(8), nullable=False),
        sa.Column("peer", sa.String(128), nullable=False),
        sa.Column("length", sa.Integer, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade():
    for name in ("unknown_frames", "commands", "positions", "devices"):
        op.drop_table(name)
