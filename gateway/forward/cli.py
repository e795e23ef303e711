# -*- test-case-name: tests.test_forward -*-
"""
C{trackport forward list} (each sink: cursor, lag, holder, last error) and
C{trackport forward replay NAME --since ISO | --from-id N}.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

from gateway.model import isoformat

# SQLAlchemy, the schema and the store are imported where they are used: every CLI
# call (`trackport decode` too) builds its parser with this module.


def sink_status(engine) -> list:
    """
    Every sink any gateway process registered, with what it still has to
    deliver: C{waiting} records and C{waiting_events} command status changes
    after its cursor, and C{lag_s}, the age of the oldest waiting record.
    """
    from sqlalchemy import func, select

    from gateway import schema
    from gateway.store import now, utc

    s = schema.forward_sinks.c
    p = schema.positions.c
    e = schema.command_events.c
    out = []
    stamp = now()
    with engine.connect() as connection:
        for row in connection.execute(select(schema.forward_sinks).order_by(s.name)).mappings():
            waiting, oldest = connection.execute(
                select(func.count(), func.min(p.server_time)).where(p.id > row["position_id"])).one()
            events = connection.execute(select(func.count()).where(e.id > row["event_id"])).scalar()
            out.append({
                "name": row["name"], "url": row["url"], "holder": row["holder"],
                "position_id": row["position_id"], "event_id": row["event_id"],
                "waiting": waiting, "waiting_events": events,
                "lag_s": round((stamp - utc(oldest)).total_seconds(), 3) if oldest is not None else 0.0,
                "delivered_at": isoformat(utc(row["delivered_at"])),
                "last_error": row["last_error"], "error_at": isoformat(utc(row["error_at"])),
            })
    return out


def replay(engine, name: str, since: datetime = None, from_id: int = None) -> dict:
    """
    Move a sink's cursor back so records from C{from_id} on (or stored since
    C{since}, with the command status changes since then) are delivered
    again. A cursor never moves forward here: replay cannot skip anything.
    """
    from sqlalchemy import func, select, update

    from gateway import schema

    s = schema.forward_sinks.c
    p = schema.positions.c
    e = schema.command_events.c
    with engine.begin() as connection:
        row = connection.execute(select(schema.forward_sinks).where(s.name == name)).mappings().first()
        if row is None:
            raise KeyError(name)
        event_id = row["event_id"]
        if since is not None:
            first = connection.execute(select(func.min(p.id)).where(p.server_time >= since)).scalar()
            if first is None:
                first = (connection.execute(select(func.max(p.id))).scalar() or 0) + 1
            first_event = connection.execute(select(func.min(e.id)).where(e.at >= since)).scalar()
            if first_event is not None:
                event_id = min(event_id, first_event - 1)
        else:
            first = from_id
        position_id = min(row["position_id"], max(first - 1, 0))
        connection.execute(update(schema.forward_sinks).where(s.name == name).values(
            position_id=position_id, event_id=event_id, generation=row["generation"] + 1))
        count = connection.execute(select(func.count()).where(p.id > position_id)).scalar()
    return {"name": name, "position_id": position_id, "event_id": event_id, "waiting": count}


def cmd_list(args) -> int:
    from gateway.cliutil import open_db, output

    output(sink_status(open_db(args)), args,
           ["name", "url", "holder", "position_id", "waiting", "lag_s", "waiting_events",
            "delivered_at", "last_error"])
    return 0


def cmd_replay(args) -> int:
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError as e:
            print(f"trackport forward replay: --since: {e}", file=sys.stderr)
            return 2
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
    if args.from_id is not None and args.from_id < 1:
        print("trackport forward replay: --from-id must be 1 or more", file=sys.stderr)
        return 2
    from gateway.cliutil import open_db

    try:
        done = replay(open_db(args), args.name, since, args.from_id)
    except KeyError:
        print(f"trackport forward replay: no sink named {args.name!r} (see trackport forward list)",
              file=sys.stderr)
        return 1
    json.dump(done, sys.stdout)
    sys.stdout.write("\n")
    return 0


def register(sub) -> None:
    """
    Add C{forward list|replay} to the C{trackport} command's subparsers.
    """
    from gateway.cliutil import add_db as db

    top = sub.add_parser("forward", help="forwarding sinks: list, replay")
    commands = top.add_subparsers(dest="forward_command", required=True)
    p = commands.add_parser("list", help="sinks, their cursor, lag and last error")
    db(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_list)
    p = commands.add_parser("replay", help="deliver a range of records again")
    p.add_argument("name")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--since", help="records stored since this ISO-8601 time")
    which.add_argument("--from-id", type=int, metavar="N", help="records from this id on")
    db(p)
    p.set_defaults(run=cmd_replay)
