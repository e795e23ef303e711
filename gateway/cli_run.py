# -*- test-case-name: tests.test_cli -*-
"""
C{trackport serve} (the gateway in the foreground) and C{trackport decode}.
"""

from __future__ import annotations

import binascii
import json
import sys

from gateway.cliutil import CliError, add_db, pairs


def cmd_decode(args) -> int:
    from gateway.decode import decode
    from gateway.registry import discover
    from gateway.settings import validate

    try:
        chunks = [binascii.unhexlify("".join(h.split())) for h in args.hex]
    except (binascii.Error, ValueError) as e:
        raise CliError(f"not hex: {e}") from None
    try:
        settings = validate(discover(), pairs(args.set))
    except ValueError as e:
        raise CliError(str(e)) from None
    out = decode(chunks, transport=args.transport,
                 settings={k: v for k, v in settings.items() if v is not None})
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0 if out["protocol"] is not None else 1


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    text = str(orig if orig is not None else error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def cmd_serve(args) -> int:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.python import usage

    from gateway.tap import Options, gateway_service, workers_service

    # The same options and checks as `twistd trackport`, so the two never drift.
    options = Options()
    argv = ["--port", str(args.port), "--interface", args.interface,
            "--idle-timeout", str(args.idle_timeout), "--devices", args.devices,
            "--claim-window", str(args.claim_window), "--udp-peers", str(args.udp_peers)]
    argv += ["--db", args.db] if args.db else []
    argv += ["--config", args.config] if args.config else []
    argv += ["--reuse-port"] if args.reuse_port else []
    argv += ["--proxy-protocol"] if args.proxy_protocol else []
    argv += ["--workers", str(args.workers)]
    for forward in args.forward or ():
        argv += ["--forward", forward]
    argv += ["--http", args.http] if args.http else []
    argv += ["--map-tiles", args.map_tiles] if args.map_tiles is not None else []
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        raise CliError(str(e)) from None
    if options["workers"] > 1:
        try:
            service = workers_service(options)
        except Exception as e:
            raise CliError(f"cannot start: {_first_line(e)}", 1) from None
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
        service.startService()
    else:
        service = gateway_service(options)
        try:
            service.prepare()
            service.startService()
        except Exception as e:
            # A start that fails leaves no empty database behind.
            service.discard_new_database()
            raise CliError(f"cannot start: {_first_line(e)}", 1) from None
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


def register(sub) -> None:
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
    p.add_argument("--forward", action="append", metavar="NAME=URL",
                   help="forward stored records to a webhook, MQTT or AMQP URL (repeatable)")
    p.add_argument("--http", metavar="[HOST:]PORT",
                   help="serve the HTTP API, live feed, console and /metrics (host default 127.0.0.1)")
    p.add_argument("--map-tiles", metavar="URL",
                   help="map tile URL template for the console ('' for none; default OpenStreetMap)")
    p.add_argument("--devices", choices=("any", "known"), default="any",
                   help="known: store and ack only devices added with `trackport devices add`")
    p.add_argument("--claim-window", type=float, default=120.0, metavar="SECONDS",
                   help="how long a frame naming a device counts as a claim on it (default 120)")
    p.add_argument("--udp-peers", type=int, default=100_000, metavar="N",
                   help="UDP peer addresses remembered at most (default 100000, about 1 KB each)")
    add_db(p)
    p.set_defaults(run=cmd_serve)
