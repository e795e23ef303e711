# -*- test-case-name: tests.test_cli -*-
"""
C{trackport devices | positions | unknown | configure}: what the database
holds, and per-device settings.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timedelta, timezone

from gateway.cliutil import CliError, add_db, open_db, output, pairs, positive

_DEVICE_ID = re.compile(r"[!-~]{1,64}")
_AGO = re.compile(r"(\d+)\s*([smhd])")


def device_id(text: str) -> str:
    """
    An C{argparse} type: printable ASCII without spaces, at most 64 characters.
    """
    import argparse

    if not _DEVICE_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"not a device id: {text!r} (printable ASCII without spaces, at most 64 characters)")
    return text


def since(text: str) -> datetime:
    """
    An C{argparse} type for C{--since}: ISO-8601 (UTC unless it says), C{today},
    C{yesterday}, or an age such as C{90s}, C{15m}, C{2h}, C{3d}.
    """
    import argparse

    now = datetime.now(timezone.utc)
    word = text.strip().lower()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if word == "today":
        return midnight
    if word == "yesterday":
        return midnight - timedelta(days=1)
    m = _AGO.fullmatch(word)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now - timedelta(**{unit: int(m.group(1))})
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (ISO-8601 such as 2024-05-01T12:00:00Z, today, yesterday, "
            "or an age such as 15m, 2h, 3d)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def cmd_devices(args) -> int:
    from gateway import queries

    engine = open_db(args)
    if args.action == "add":
        return _add(engine, args)
    if args.action is not None:
        raise CliError(f"unknown devices action {args.action!r} (add)")
    output(queries.devices(engine), args,
           ["id", "protocol", "transport", "last_seen", "last_peer", "known", "conflict", "settings"])
    return 0


def _add(engine, args) -> int:
    from gateway.registry import discover
    from gateway.store import add_known

    if args.id is None:
        raise CliError("devices add needs a device id: trackport devices add ID [--protocol P]")
    device_id(args.id)
    if args.protocol is not None and args.protocol not in discover():
        raise CliError(f"unknown protocol {args.protocol!r}; one of: {', '.join(discover())}")
    with engine.begin() as connection:
        add_known(connection, engine.dialect.name, args.id, args.protocol)
    print(f"device {args.id} added" + (f" ({args.protocol})" if args.protocol else ""))
    return 0


def cmd_positions(args) -> int:
    from gateway import queries

    rows = queries.positions(open_db(args), args.device, args.since, args.limit)
    output(rows, args, ["device_id", "time", "latitude", "longitude", "valid", "speed_kmh",
                        "course", "alarm", "event"])
    return 0


def cmd_unknown(args) -> int:
    from gateway import queries

    output(queries.unknown(open_db(args), args.limit), args,
           ["received_at", "transport", "peer", "length", "reason", "hex"])
    return 0


def cmd_configure(args) -> int:
    from sqlalchemy import select

    from gateway import schema
    from gateway.registry import discover
    from gateway.settings import validate
    from gateway.store import merge_settings

    engine = open_db(args)
    with engine.connect() as connection:
        protocol = connection.execute(select(schema.devices.c.protocol)
                                      .where(schema.devices.c.id == args.device_id)).scalar_one_or_none()
    try:
        # An empty value removes the setting.
        settings = validate(discover(), pairs(args.settings), protocol)
    except ValueError as e:
        raise CliError(str(e)) from None
    with engine.begin() as connection:
        merged = merge_settings(connection, engine.dialect.name, args.device_id, settings)
    json.dump({"device_id": args.device_id, "settings": merged}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def register(sub) -> None:
    p = sub.add_parser("devices", help="devices seen or added; `devices add ID` admits one")
    p.add_argument("action", nargs="?", choices=("add",), help="add: admit a device (--devices known)")
    p.add_argument("id", nargs="?", metavar="ID")
    p.add_argument("--protocol", help="with add: the device's protocol")
    add_db(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_devices)

    p = sub.add_parser("positions", help="stored records")
    add_db(p)
    p.add_argument("--device", type=device_id)
    p.add_argument("--since", type=since,
                   help="device time: ISO-8601, today, yesterday, or an age such as 15m, 2h, 3d")
    p.add_argument("--limit", type=positive, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_positions)

    p = sub.add_parser("unknown", help="traffic no decoder recognised, or of devices not admitted")
    add_db(p)
    p.add_argument("--limit", type=positive, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_unknown)

    p = sub.add_parser("configure", help="set per-device settings (KEY= removes one)")
    p.add_argument("device_id", type=device_id)
    p.add_argument("settings", nargs="+", metavar="KEY=VALUE")
    add_db(p)
    p.set_defaults(run=cmd_configure)
