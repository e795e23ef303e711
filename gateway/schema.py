# -*- test-case-name: tests.test_store -*-
"""
The database schema, one for SQLite and PostgreSQL (SQLAlchemy Core).

The tables here describe the current version; C{gateway/migrations} holds the
steps that bring an older database to it. Change both together.
"""

from sqlalchemy import (
    JSON, BigInteger, Boolean, Column, DateTime, Float, Index, Integer, LargeBinary,
    MetaData, String, Table, Text, UniqueConstraint,
)
from sqlalchemy.dialects import postgresql

#: The migration (C{gateway/migrations/versions}) that creates these tables.
REVISION = "0006"

metadata = MetaData()

#: JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
Json = JSON().with_variant(postgresql.JSONB(), "postgresql")
#: JSON text everywhere: a record's alarm and attributes, stored as the
#: gateway serialised them (the text its fingerprint covers), which
#: PostgreSQL only validates; JSONB would parse and rebuild every record's
#: (migration 0006).
JsonText = JSON()
#: 64-bit keys on PostgreSQL; SQLite needs INTEGER for an auto-incrementing rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Time = DateTime(timezone=True)

devices = Table(
    "devices", metadata,
    Column("id", String(64), primary_key=True),
    Column("protocol", String(32)),
    Column("transport", String(8)),
    Column("first_seen", Time),
    Column("last_seen", Time),
    Column("last_peer", String(128)),
    Column("settings", Json, nullable=False, default=dict),
    Column("settings_changed", Time, index=True),
    # Commit-ordered settings version (see gateway.ordering): what settings
    # sync reads by cursor.
    Column("settings_seq", BigInteger, index=True),
    # Added by an operator (trackport devices add): what --devices known admits.
    Column("known", Boolean),
    # Two peers claiming this id at once (gateway.identity), as text; NULL when none.
    Column("conflict", Text),
    Column("conflict_at", Time),
)

positions = Table(
    "positions", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("device_id", String(64)),
    Column("protocol", String(32)),
    Column("time", Time),
    Column("server_time", Time, nullable=False),
    Column("latitude", Float),
    Column("longitude", Float),
    Column("valid", Boolean, nullable=False),
    Column("speed_kmh", Float),
    Column("course", Float),
    Column("altitude_m", Float),
    Column("alarm", JsonText, nullable=False),
    Column("event", String(64)),
    Column("attributes", JsonText, nullable=False),
    Column("fingerprint", String(32), nullable=False),
    UniqueConstraint("device_id", "fingerprint", name="uq_positions_device_fingerprint"),
    Index("ix_positions_device_time", "device_id", "time"),
)

commands = Table(
    "commands", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("type", String(32), nullable=False),
    Column("params", Json, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Time, nullable=False),
    Column("expires_at", Time),
    Column("sent_at", Time),
    Column("confirmed_at", Time),
    Column("finished_at", Time),
    Column("token", String(64)),
    Column("data", LargeBinary),
    Column("reply", Text),
    Column("error", Text),
    # The session the command was written on: only a reply there confirms it.
    Column("session", String(160)),
    Index("ix_commands_device_status", "device_id", "status"),
    Index("ix_commands_status", "status"),
)

unknown_frames = Table(
    "unknown_frames", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("received_at", Time, nullable=False),
    Column("transport", String(8), nullable=False),
    Column("peer", String(128), nullable=False),
    Column("length", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("reason", Text),
)

command_events = Table(
    "command_events", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("command_id", Integer, nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("type", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("at", Time, nullable=False),
    Column("detail", Text),
    Index("ix_command_events_command", "command_id"),
)

#: What the database refused, or what named no valid device, kept raw with the
#: reason (migration 0002): C{kind} is C{record}, C{device_id}, C{last_seen} or
#: C{settings}; C{device_id} is the claimed id, escaped; C{data} the frame.
rejected_records = Table(
    "rejected_records", metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("received_at", Time, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("transport", String(8)),
    Column("peer", String(128)),
    Column("protocol", String(32)),
    Column("device_id", Text),
    Column("reason", Text, nullable=False),
    Column("detail", Text),
    Column("length", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

#: One row per forwarding sink: its cursors (the last position and command
#: event the target confirmed), who delivers it (SQLite's lease), and how it
#: fares. See L{gateway.forward}.
forward_sinks = Table(
    "forward_sinks", metadata,
    Column("name", String(64), primary_key=True),
    Column("url", Text, nullable=False),
    Column("position_id", BigInteger, nullable=False),
    Column("event_id", BigInteger, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("holder", String(128)),
    Column("lease_until", Time),
    Column("delivered_at", Time),
    Column("last_error", Text),
    Column("error_at", Time),
)

#: HTTP API bearer tokens, as SHA-256 digests (migration 0005).
api_tokens = Table(
    "api_tokens", metadata,
    Column("name", String(64), primary_key=True),
    Column("hash", String(64), nullable=False, unique=True),
    Column("read_only", Boolean, nullable=False),
    Column("created_at", Time, nullable=False),
)
