# -*- test-case-name: tests.test_cli -*-
"""
What the C{trackport} subcommands share: opening the database without ever
creating one, reading C{KEY=VALUE} pairs, and printing readable tables.
"""

from __future__ import annotations

import json
import os
import sys

from gateway.hexdump import printable


class CliError(Exception):
    """
    A mistake the operator can fix: printed as one line, the process exits
    with C{code}.
    """

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def add_db(parser) -> None:
    parser.add_argument("--db", help="database URL (default: $TRACKPORT_DB, else db in the "
                                     "configuration file, else sqlite:///trackport.db)")
    parser.add_argument("--config", metavar="FILE",
                        help="configuration file (default: $TRACKPORT_CONFIG, else /etc/trackport.conf)")


def pairs(items, what="KEY=VALUE") -> dict:
    out = {}
    for pair in items or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"expected {what}, got {pair!r}")
        out[key] = value
    return out


def positive(text: str) -> int:
    """
    An C{argparse} type: a whole number of at least 1.
    """
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _where(args) -> str:
    return ("--db URL, TRACKPORT_DB=URL, or db = URL in the [trackport] section of "
            "/etc/trackport.conf (or --config FILE)")


def open_db(args):
    """
    The engine of an existing trackport database; only C{serve} and C{twistd
    trackport} create one.
    """
    from sqlalchemy.exc import DBAPIError

    from gateway import schema
    from gateway.config import ConfigError
    from gateway.store import BadDatabaseURL, check_url, database_url, engine_for, migrate

    try:
        url = database_url(args.db, args.config)
        parsed = check_url(url)
    except (BadDatabaseURL, ConfigError) as e:
        raise CliError(str(e)) from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite" and not os.path.exists(parsed.database):
        raise CliError(f"no database at {os.path.abspath(parsed.database)}: choose one with "
                       f"{_where(args)}; `trackport serve` or `twistd trackport` creates it", 1)
    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            revision = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except DBAPIError as e:
        engine.dispose()
        text = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
        if "alembic_version" in text:
            raise CliError(f"{shown} is not a trackport database (no schema): choose the gateway's "
                           f"with {_where(args)}", 1) from None
        raise CliError(f"cannot open the database {shown}: {text}", 1) from None
    if revision != schema.REVISION:
        migrate(engine)
    return engine


def cell(value, column: str = "") -> str:
    """
    One value as table text: numbers rounded, lists and mappings spelled
    out, device text escaped.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        digits = 6 if column in ("latitude", "longitude") else 1
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{printable(k, 40)}={cell(v)}" for k, v in value.items())
    return printable(value, 80)


def table(rows, columns) -> None:
    if not rows:
        print("(none)")
        return
    text = [[cell(r.get(c), c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for t in text:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip())


def output(rows, args, columns) -> None:
    if args.json:
        json.dump(rows, sys.stdout)
        sys.stdout.write("\n")
    else:
        table(rows, columns)
