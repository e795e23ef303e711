# -*- test-case-name: tests.test_cli -*-
"""
The C{trackport} command line: run the gateway, decode frames, and look at or
change what the database holds (DESIGN.md, "Running it").
"""

from __future__ import annotations

import argparse
import binascii
import json
import sys
from datetime import datetime, timezone


def _pairs(pairs, what="KEY=VALUE"):
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected {what}, got {pair!r}")
        out[key] = value
    return out


def _engine(args):
    from gateway.store import database_url, engine_for, migrate

    engine = engine_for(database_url(args.db))
    migrate(engine)
    return engine


def _table(rows, columns):
    if not rows:
        print("(none)")
        return
    text = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for t in text:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip())


def _print(rows, args, columns):
    if args.json:
        json.dump(rows, sys.stdout)
        sys.stdout.write("\n")
    else:
        _table(rows, columns)


def cmd_decode(args) -> int:
    from gateway.decode import decode

    try:
        chunks = [binascii.unhexlify("".join(h.split())) for h in args.hex]
        settings = _pairs(args.set)
    except (binascii.Error, ValueError) as e:
        print(f"trackport decode: {e}", file=sys.stderr)
        return 2
    out = decode(chunks, transport=args.transport, settings=settings)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0 if out["protocol"] is not None else 1


def cmd_serve(args) -> int:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from twisted.python import usage

    from gateway.tap import Options, makeService

    # The same options and checks as `twistd trackport`, so the two never drift.
    options = Options()
    argv = ["--port", str(args.port), "--interface", args.interface,
            "--idle-timeout", str(args.idle_timeout)]
    argv += ["--db", args.db] if args.db else []
    argv += ["--reuse-port"] if args.reuse_port else []
    argv += ["--proxy-protocol"] if args.proxy_protocol else []
    argv += ["--workers", str(args.workers)]
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print(f"trackport serve: {e}", file=sys.stderr)
        return 2
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    service = makeService(options)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


def cmd_devices(args) -> int:
    from gateway import queries

    _print(queries.devices(_engine(args)), args,
           ["id", "protocol", "transport", "last_seen", "last_peer", "settings"])
    return 0


def cmd_positions(args) -> int:
    from gateway import queries

    since = None
    if args.since:
        since = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
    rows = queries.positions(_engine(args), args.device, since, args.limit)
    _print(rows, args, ["device_id", "time", "latitude", "longitude", "valid", "speed_kmh",
                        "course", "alarm", "event"])
    return 0


def cmd_unknown(args) -> int:
    from gateway import queries

    _print(queries.unknown(_engine(args), args.limit), args,
           ["received_at", "transport", "peer", "length", "hex"])
    return 0


def _supported(protocol):
    from gateway.registry import discover, encoder_for

    decoder = discover().get(protocol)
    encoder = encoder_for(decoder) if decoder is not None else None
    return None if encoder is None else frozenset(encoder.commands)


def cmd_send(args) -> int:
    from gateway.commands import enqueue, list_commands

    try:
        params = _pairs(args.param)
        engine = _engine(args)
        command_id = enqueue(engine, args.device_id, args.command, params, args.ttl, _supported)
    except ValueError as e:
        print(f"trackport send: {e}", file=sys.stderr)
        return 2
    print(command_id)
    row = next(r for r in list_commands(engine, args.device_id) if r["id"] == command_id)
    if row["status"] == "failed":
        print(f"trackport send: command {command_id} failed: {row['error']}", file=sys.stderr)
        return 1
    return 0


def cmd_commands(args) -> int:
    from gateway.commands import list_commands

    _print(list_commands(_engine(args), args.device), args,
           ["id", "device_id", "type", "status", "created_at", "sent_at", "confirmed_at",
            "reply", "error"])
    return 0


def cmd_configure(args) -> int:
    from gateway.store import merge_settings

    try:
        settings = _pairs(args.settings)
    except ValueError as e:
        print(f"trackport configure: {e}", file=sys.stderr)
        return 2
    # An empty value removes the setting.
    settings = {k: (v if v != "" else None) for k, v in settings.items()}
    engine = _engine(args)
    with engine.begin() as connection:
        merged = merge_settings(connection, engine.dialect.name, args.device_id, settings)
    json.dump({"device_id": args.device_id, "settings": merged}, sys.stdout)
    sys.stdout.write("\n")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="trackport", description="GPS tracker gateway")
    sub = top.add_subparsers(dest="command", required=True)

    def db(p):
        p.add_argument("--db", help="database URL (default: $TRACKPORT_DB, else sqlite:///trackport.db)")

    p = sub.add_parser("decode", help="decode chunks of one session given as hex")
    p.add_argument("--transport", choices=("tcp", "udp"), default="tcp")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a per-device setting, e.g. atrack.format=%%SA%%MV")
    p.add_argument("hex", nargs="+", metavar="HEX")
    p.set_defaults(run=cmd_decode)

    p = sub.add_parser("serve", help="run the gateway in the foreground (TCP and UDP)")
    p.add_argument("--port", type=int, default=8888)
    p.add_argument("--interface", default="")
    p.add_argument("--reuse-port", action="store_true",
                   help="SO_REUSEPORT: several gateway processes share the port")
    p.add_argument("--proxy-protocol", action="store_true",
                   help="TCP comes through a balancer sending PROXY headers (v1/v2)")
    p.add_argument("--workers", type=int, default=1,
                   help="gateway processes sharing the port under this one (default 1)")
    p.add_argument("--idle-timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="drop a TCP connection silent for this long (0: never; default 3600)")
    db(p)
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("devices", help="devices seen")
    db(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_devices)

    p = sub.add_parser("positions", help="stored records")
    db(p)
    p.add_argument("--device")
    p.add_argument("--since", help="ISO-8601 time (device time)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_positions)

    p = sub.add_parser("unknown", help="sessions no decoder recognised")
    db(p)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_unknown)

    p = sub.add_parser("send", help="queue a command for a device; prints its id")
    p.add_argument("device_id")
    p.add_argument("command", help="engine_stop, engine_resume, position_request, reboot, "
                                   "set_interval, custom")
    p.add_argument("--param", action="append", metavar="KEY=VALUE")
    p.add_argument("--ttl", type=float, help="seconds before an undelivered command expires")
    db(p)
    p.set_defaults(run=cmd_send)

    p = sub.add_parser("commands", help="commands and their status")
    db(p)
    p.add_argument("--device")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_commands)

    p = sub.add_parser("configure", help="set per-device settings (KEY= removes one)")
    p.add_argument("device_id")
    p.add_argument("settings", nargs="+", metavar="KEY=VALUE")
    db(p)
    p.set_defaults(run=cmd_configure)
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
