"""A record's alarm and attributes as JSON text on PostgreSQL, not JSONB.

JSONB parses and rebuilds every value on insert; JSON only validates it, and
keeps the text the gateway wrote (the one its fingerprint covers: key order,
-0.0 and 1e300 as they were). Nothing trackport runs uses JSONB's operators
on these columns. PostgreSQL rewrites the table (and its indexes) once, under
an exclusive lock; SQLite stores JSON as text already.

Revision ID: 0006
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _retype(kind):
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE positions ALTER COLUMN alarm TYPE {kind} USING alarm::{kind}, "
                   f"ALTER COLUMN attributes TYPE {kind} USING attributes::{kind}")


def upgrade():
    _retype("json")


def downgrade():
    _retype("jsonb")
