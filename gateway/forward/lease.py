# -*- test-case-name: tests.test_forward_e2e -*-
"""
Which gateway process delivers a sink: exactly one at a time, and another
takes over when it dies.

PostgreSQL: a session-level advisory lock held on the delivering process's own
connection; the server releases it the moment that connection ends (a
process killed -9 included), and the next process that asks gets it.
SQLite: a lease row (holder, expiry) renewed while delivering; a dead
holder's lease expires after L{RowLease.ttl} seconds, at once when the holder
was a process of this host that no longer exists.
"""

from __future__ import annotations

import os
import socket
import zlib
from datetime import timedelta

from sqlalchemy import and_, or_, select, update

from gateway import schema
from gateway.store import now

#: The advisory lock class for sinks ("trkf"); the sink name picks the object.
SINK_LOCK = 0x74726B66


def holder_name() -> str:
    """
    How this process names itself as a sink's holder.
    """
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(holder: str) -> bool:
    """
    Whether C{holder} names a process of this host that has ended.
    """
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _sink_key(name: str) -> int:
    value = zlib.crc32(name.encode("utf-8"))
    return value - (1 << 32) if value >= 1 << 31 else value


class AdvisoryLease:
    """
    PostgreSQL: held as long as the connection it was taken on lives.
    """

    def __init__(self, name: str, holder: str):
        self.name = name
        self.holder = holder

    def acquire(self, connection) -> bool:
        got = connection.exec_driver_sql(
            f"SELECT pg_try_advisory_lock({SINK_LOCK}, {_sink_key(self.name)})").scalar()
        if got:
            # For `trackport forward list` only: the lock is the lease.
            connection.execute(update(schema.forward_sinks)
                               .where(schema.forward_sinks.c.name == self.name)
                               .values(holder=self.holder, lease_until=None))
        return bool(got)

    def renew(self, connection) -> bool:
        return True

    def release(self, connection) -> None:
        connection.execute(update(schema.forward_sinks)
                           .where(and_(schema.forward_sinks.c.name == self.name,
                                       schema.forward_sinks.c.holder == self.holder))
                           .values(holder=None))
        connection.exec_driver_sql(f"SELECT pg_advisory_unlock({SINK_LOCK}, {_sink_key(self.name)})")


class RowLease:
    """
    SQLite: C{forward_sinks.holder} until C{lease_until}, renewed every
    L{renew_every} seconds by the holder.
    """

    ttl = 15.0
    renew_every = 5.0

    def __init__(self, name: str, holder: str):
        self.name = name
        self.holder = holder
        self._renewed = None

    def acquire(self, connection) -> bool:
        s = schema.forward_sinks.c
        stamp = now()
        current = connection.execute(select(s.holder).where(s.name == self.name)).scalar()
        if current is not None and _gone(current):
            connection.execute(update(schema.forward_sinks)
                               .where(and_(s.name == self.name, s.holder == current))
                               .values(holder=None, lease_until=None))
        taken = connection.execute(
            update(schema.forward_sinks)
            .where(and_(s.name == self.name,
                        or_(s.holder.is_(None), s.holder == self.holder, s.lease_until < stamp)))
            .values(holder=self.holder, lease_until=stamp + timedelta(seconds=self.ttl))).rowcount
        if taken:
            self._renewed = stamp
        return bool(taken)

    def renew(self, connection) -> bool:
        if self._renewed is not None and (now() - self._renewed).total_seconds() < self.renew_every:
            return True
        return self.acquire(connection)

    def release(self, connection) -> None:
        s = schema.forward_sinks.c
        connection.execute(update(schema.forward_sinks)
                           .where(and_(s.name == self.name, s.holder == self.holder))
                           .values(holder=None, lease_until=None))
        self._renewed = None


def lease_for(dialect: str, name: str, holder: str):
    return AdvisoryLease(name, holder) if dialect == "postgresql" else RowLease(name, holder)
