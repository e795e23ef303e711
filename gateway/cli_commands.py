# -*- test-case-name: tests.test_cli -*-
"""
C{trackport send} and C{trackport commands [cancel ID]}.
"""

from __future__ import annotations

import sys
import time

from gateway.cliutil import CliError, add_db, open_db, output, pairs, positive
from gateway.cli_data import device_id

#: The parameters each command takes, across the protocols (an encoder reads
#: those that apply to it): a name outside these is a typing mistake.
PARAMETERS = {
    "engine_stop": {"mode", "output", "password", "time_hhmmss"},
    "engine_resume": {"output", "password", "time_hhmmss"},
    "position_request": {"password"},
    "reboot": {"password"},
    "set_interval": {"seconds", "metres", "enabled", "password", "time_hhmmss"},
    "custom": {"text", "hex", "password"},
}


def check_params(command: str, params: dict) -> None:
    allowed = PARAMETERS[command]
    for name in params:
        if name not in allowed:
            raise CliError(f"{command} has no parameter {name!r} (it takes: "
                           f"{', '.join(sorted(allowed)) or 'none'})")
    for name in ("seconds", "metres"):
        if name in params and not (params[name].isascii() and params[name].isdigit()
                                   and int(params[name]) > 0):
            raise CliError(f"--param {name} must be a whole number above 0, not {params[name]!r}")
    if command == "custom":
        if ("text" in params) == ("hex" in params):
            raise CliError("custom needs exactly one of --param text=... or --param hex=...")
        if "hex" in params:
            try:
                bytes.fromhex(params["hex"])
            except ValueError:
                raise CliError(f"--param hex is not hexadecimal: {params['hex']!r}") from None
        if not (params.get("text") or params.get("hex")):
            raise CliError("custom needs a non-empty text or hex")
    if command == "set_interval" and not ({"seconds", "metres"} & set(params)):
        raise CliError("set_interval needs --param seconds=N")


def try_encoder(protocol: str, device: str, command: str, params: dict, settings: dict) -> None:
    # The device's protocol encodes the command now, as it will at delivery:
    # what it refuses is refused here, before anything is queued.
    from gateway.context import Context
    from gateway.interfaces import EncodeError
    from gateway.model import Command
    from gateway.registry import discover, encoder_for

    decoder = discover().get(protocol)
    encoder = encoder_for(decoder) if decoder is not None else None
    if encoder is None or command not in encoder.commands:
        return
    context = Context(transport="tcp", device_id=device, lookup=lambda _: settings,
                      seconds=time.time)
    try:
        encoder.encode(Command(0, device, command, params), context)
    except EncodeError as e:
        raise CliError(f"{protocol} cannot encode this {command}: {e}") from None


def supported(protocol):
    from gateway.registry import discover, encoder_for

    decoder = discover().get(protocol)
    encoder = encoder_for(decoder) if decoder is not None else None
    return None if encoder is None else frozenset(encoder.commands)


def cmd_send(args) -> int:
    from sqlalchemy import select

    from gateway import schema
    from gateway.commands import enqueue, list_commands
    from gateway.model import COMMAND_TYPES

    if args.command not in COMMAND_TYPES:
        raise CliError(f"unknown command {args.command!r}; one of: {', '.join(sorted(COMMAND_TYPES))}")
    params = pairs(args.param)
    check_params(args.command, params)
    if args.ttl is not None and not args.ttl > 0:
        raise CliError(f"--ttl must be a number of seconds above 0, not {args.ttl:g}")
    engine = open_db(args)
    d = schema.devices.c
    with engine.connect() as connection:
        device = connection.execute(select(d.protocol, d.settings, d.last_seen, d.known)
                                    .where(d.id == args.device_id)).first()
    if device is None or (device.last_seen is None and not device.known):
        if not args.force:
            raise CliError(f"device {args.device_id} was never seen nor added: check the id "
                           "(trackport devices), or queue it anyway with --force")
        print(f"trackport send: warning: device {args.device_id} was never seen; queued anyway",
              file=sys.stderr)
    if device is not None and device.protocol:
        try_encoder(device.protocol, args.device_id, args.command, params, dict(device.settings or {}))
    try:
        command_id = enqueue(engine, args.device_id, args.command, params, args.ttl, supported)
    except ValueError as e:
        raise CliError(str(e)) from None
    print(command_id)
    row = next((r for r in list_commands(engine, args.device_id, status="failed", limit=5)
                if r["id"] == command_id), None)
    if row is not None:
        print(f"trackport send: command {command_id} failed: {row['error']}", file=sys.stderr)
        return 1
    return 0


def cmd_commands(args) -> int:
    from gateway.commands import cancel, list_commands

    engine = open_db(args)
    if args.action == "cancel":
        if args.id is None:
            raise CliError("commands cancel needs a command id: trackport commands cancel ID")
        why = cancel(engine, args.id)
        if why is not None:
            raise CliError(why, 1)
        print(f"command {args.id} cancelled")
        return 0
    output(list_commands(engine, args.device, args.limit, args.status), args,
           ["id", "device_id", "type", "params", "status", "created_at", "sent_at", "confirmed_at",
            "reply", "error"])
    return 0


def register(sub) -> None:
    # The constant, not gateway.commands: every CLI call (decode too) builds
    # this parser, and that module brings SQLAlchemy and Twisted with it.
    from gateway.model import COMMAND_STATUSES as STATUSES

    p = sub.add_parser("send", help="queue a command for a device; prints its id")
    p.add_argument("device_id", type=device_id)
    p.add_argument("command", help="engine_stop, engine_resume, position_request, reboot, "
                                   "set_interval, custom")
    p.add_argument("--param", action="append", metavar="KEY=VALUE")
    p.add_argument("--ttl", type=float, help="seconds before an undelivered command expires")
    p.add_argument("--force", action="store_true", help="queue for a device never seen nor added")
    add_db(p)
    p.set_defaults(run=cmd_send)

    p = sub.add_parser("commands", help="commands and their status; `commands cancel ID` cancels one")
    p.add_argument("action", nargs="?", choices=("cancel",))
    p.add_argument("id", nargs="?", type=int, metavar="ID")
    add_db(p)
    p.add_argument("--device", type=device_id)
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--limit", type=positive, default=1000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_commands)
