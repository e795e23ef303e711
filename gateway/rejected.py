# -*- test-case-name: tests.test_faults_e2e -*-
"""
C{trackport rejected}: what the gateway kept raw instead of storing (a frame
naming no valid device id, a record, last-seen data or settings the database
refused), with the reason.
"""

from __future__ import annotations

from gateway.hexdump import printable
from gateway.model import isoformat

# SQLAlchemy, the schema and the store are imported where they are used: every CLI
# call (`trackport decode` too) builds its parser with this module.

COLUMNS = ["id", "received_at", "kind", "transport", "peer", "protocol", "device_id", "reason", "length", "hex"]


def rejected(engine, limit: int = 100):
    """
    The latest C{limit} rejected rows, oldest first, as JSON-ready dicts.
    """
    from sqlalchemy import select

    from gateway import schema
    from gateway.store import utc

    r = schema.rejected_records.c
    with engine.connect() as connection:
        rows = connection.execute(
            select(schema.rejected_records).order_by(r.id.desc()).limit(limit)).mappings().all()
    return [{
        "id": row["id"], "received_at": isoformat(utc(row["received_at"])), "kind": row["kind"],
        "transport": row["transport"], "peer": row["peer"], "protocol": row["protocol"],
        "device_id": row["device_id"], "reason": row["reason"], "detail": row["detail"],
        "length": row["length"], "hex": bytes(row["data"]).hex(),
    } for row in reversed(rows)]


def register(sub) -> None:
    """
    Add the C{rejected} command to C{trackport}'s subcommands.
    """
    from gateway.cliutil import add_db, positive

    p = sub.add_parser("rejected", help="frames and rows kept raw instead of stored, with the reason")
    add_db(p)
    p.add_argument("--limit", type=positive, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run)


def run(args) -> int:
    from gateway.cliutil import open_db, output

    rows = rejected(open_db(args), args.limit)
    if not args.json:
        # Stored text is storable, not harmless on a terminal: escape it.
        rows = [{k: (printable(v, 120) if isinstance(v, str) and k != "hex" else v) for k, v in row.items()}
                for row in rows]
        for row in rows:
            row["hex"] = row["hex"][:64] + ("..." if len(row["hex"]) > 64 else "")
    output(rows, args, COLUMNS)
    return 0
