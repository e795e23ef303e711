# -*- test-case-name: tests.test_http -*-
"""
Bearer tokens for the HTTP API: made by an operator on the command line, kept
in the database only as a SHA-256 digest, so a stolen database grants nothing.

A token is C{tp_} and 43 URL-safe characters (256 random bits); being
random and long, a plain digest (no salt, no slow hash) is enough to make it
unrecoverable, and lets a request find its token with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import List, Optional

import attrs

from gateway.model import isoformat

# SQLAlchemy, the schema and the store are imported where they are used: every CLI
# call (`trackport decode` too) builds its parser with this module.

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")


@attrs.frozen
class Grant:
    """
    What a valid token allows.
    """

    name: str
    read_only: bool


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create(engine, name: str, read_only: bool = False) -> str:
    """
    Make a token named C{name}; return it (the only time it is ever shown).

    @raise ValueError: the name is malformed or taken.
    """
    from sqlalchemy import select

    from gateway import schema
    from gateway.store import now

    if not _NAME.match(name):
        raise ValueError(f"token name {name!r}: letters, digits and _.@- only, at most 64")
    token = "tp_" + secrets.token_urlsafe(32)
    t = schema.api_tokens
    with engine.begin() as connection:
        if connection.execute(select(t.c.name).where(t.c.name == name)).first() is not None:
            raise ValueError(f"a token named {name!r} exists; revoke it first")
        connection.execute(t.insert().values(name=name, hash=digest(token), read_only=read_only,
                                             created_at=now()))
    return token


def revoke(engine, name: str) -> bool:
    """
    Delete the token named C{name}; C{False} when there was none.
    """
    from sqlalchemy import delete

    from gateway import schema

    with engine.begin() as connection:
        return connection.execute(delete(schema.api_tokens).where(schema.api_tokens.c.name == name)).rowcount > 0


def listing(engine) -> List[dict]:
    from sqlalchemy import select

    from gateway import schema
    from gateway.store import utc

    t = schema.api_tokens
    with engine.connect() as connection:
        rows = connection.execute(select(t.c.name, t.c.read_only, t.c.created_at).order_by(t.c.name)).all()
    return [{"name": r.name, "read_only": r.read_only, "created_at": isoformat(utc(r.created_at))}
            for r in rows]


def verify(engine, token: Optional[str]) -> Optional[Grant]:
    """
    The grant of C{token}, or L{None} when it is missing or not a token.
    """
    from sqlalchemy import select

    from gateway import schema

    if not token or len(token) > 200:
        return None
    t = schema.api_tokens
    with engine.connect() as connection:
        row = connection.execute(select(t.c.name, t.c.read_only).where(t.c.hash == digest(token))).first()
    return None if row is None else Grant(row.name, bool(row.read_only))


# -- trackport token ... --------------------------------------------------------

def register(sub) -> None:
    """
    Add C{trackport token create|list|revoke} to the command line.
    """
    from gateway.cliutil import add_db as db

    p = sub.add_parser("token", help="HTTP API tokens")
    verbs = p.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser("create", help="make a token and print it (shown once)")
    c.add_argument("name")
    c.add_argument("--read-only", action="store_true", help="may read, not send or cancel commands")
    db(c)
    c.set_defaults(run=_cmd_create)
    c = verbs.add_parser("list", help="token names and rights (never the tokens)")
    c.add_argument("--json", action="store_true")
    db(c)
    c.set_defaults(run=_cmd_list)
    c = verbs.add_parser("revoke", help="delete a token")
    c.add_argument("name")
    db(c)
    c.set_defaults(run=_cmd_revoke)


def _cmd_create(args) -> int:
    from gateway.cliutil import CliError, open_db

    try:
        print(create(open_db(args), args.name, args.read_only))
    except ValueError as e:
        raise CliError(str(e)) from None
    return 0


def _cmd_list(args) -> int:
    from gateway.cliutil import open_db, output

    output(listing(open_db(args)), args, ["name", "read_only", "created_at"])
    return 0


def _cmd_revoke(args) -> int:
    from gateway.cliutil import CliError, open_db

    if not revoke(open_db(args), args.name):
        raise CliError(f"no token named {args.name!r}", 1)
    return 0
