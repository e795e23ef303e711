# -*- test-case-name: tests.test_dbguard -*-
"""
A bound on how long any PostgreSQL call may wait for an answer.

A server that stops answering without closing the connection (a stalled host, a
middlebox that drops the flow, a proxy that stops forwarding) leaves the driver
blocked in C{recv} for as long as the kernel keeps the connection: with TCP
keepalives, minutes; through a proxy that still acknowledges, forever. Neither
the server's C{statement_timeout} (the server never sees the statement) nor
keepalives (the next hop answers them) end that wait.

So every statement, COPY, commit and rollback on a guarded connection is
watched: one watchdog thread for the process shuts down the socket of a call
still waiting after its deadline, the driver returns at once with an error, and
the caller sees L{DatabaseUnavailable}. L{Guard.close} brings every deadline
forward (a gateway that stops waits for nothing) and refuses new calls.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Optional

from gateway import pgdriver  # noqa: F401 - first: psycopg2 is psycopg2cffi on PyPy

#: Seconds between the watchdog's looks at the calls in flight.
TICK = 0.25


try:
    from psycopg2 import OperationalError as _DriverError
except ImportError:  # pragma: no cover - psycopg2 is a dependency
    _DriverError = Exception


class DatabaseUnavailable(_DriverError):
    """
    The database did not answer in time, or the gateway is stopping.

    A driver error (psycopg2's C{OperationalError}, psycopg2cffi's on PyPy),
    so SQLAlchemy treats it as one: the connection is invalidated, not rolled
    back.
    """


_lock = threading.Lock()
_cond = threading.Condition(_lock)
_watched: dict = {}
_thread: Optional[threading.Thread] = None


def _shut(fd: int) -> None:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def _watchdog() -> None:
    with _cond:
        while True:
            now = time.monotonic()
            for key, entry in list(_watched.items()):
                if entry.deadline <= now:
                    # Still under the lock the caller takes to unregister: the
                    # fd is the connection's, not reused by anything else.
                    del _watched[key]
                    entry.tripped = True
                    _shut(entry.fd)
            _cond.wait(TICK)


class _Watch:
    """
    One driver call under a deadline (L{Guard.watch}). A class, not a
    generator: it wraps every statement, COPY and commit of the writer.
    """

    __slots__ = ("deadline", "fd", "guard", "timeout", "tripped")

    def __init__(self, deadline, fd, guard, timeout):
        self.deadline = deadline
        self.fd = fd
        self.guard = guard
        self.timeout = timeout
        self.tripped = False

    def __enter__(self):
        with _lock:
            _watched[id(self)] = self
            if _thread is None:
                _start()

    def __exit__(self, kind, error, traceback):
        with _lock:
            _watched.pop(id(self), None)
        if self.tripped and isinstance(error, Exception):
            guard = self.guard
            if guard.closed:
                guard._local.trip = "the gateway is stopping: database call abandoned"
            else:
                guard._local.trip = f"no answer from the database in {self.timeout:g} s"
            raise DatabaseUnavailable(guard._local.trip) from error
        return False


def _start() -> None:
    # Called with _lock held.
    global _thread
    _thread = threading.Thread(target=_watchdog, name="trackport-dbguard", daemon=True)
    _thread.start()


class Guard:
    """
    Deadlines for the calls on one engine's connections.

    @ivar timeout: seconds a call may wait for the database, or L{None} for no
        limit but L{close}'s.
    """

    def __init__(self, timeout: Optional[float]):
        self.timeout = timeout
        self._closing: Optional[float] = None
        self._local = threading.local()

    def take_trip(self) -> Optional[str]:
        """
        Why the guard last ended a call of this thread, once; L{None} if it
        did not since the last call. (The driver's own error for the socket
        the guard shut is less clear, and may hide behind a failed rollback.)
        """
        reason = getattr(self._local, "trip", None)
        self._local.trip = None
        return reason

    @property
    def closed(self) -> bool:
        return self._closing is not None and time.monotonic() >= self._closing

    def close(self, after: float = 0.0) -> None:
        """
        From C{after} seconds on, no call waits any longer: those in flight
        are ended, new ones refused.
        """
        with _lock:
            self._closing = time.monotonic() + after
            for entry in _watched.values():
                if entry.guard is self:
                    entry.deadline = min(entry.deadline, self._closing)
            if _thread is None:
                _start()

    def check(self) -> None:
        """
        Raise L{DatabaseUnavailable} if the guard is closed.
        """
        if self.closed:
            raise DatabaseUnavailable("the gateway is stopping: no more database calls")

    def watch(self, connection, timeout: Optional[float] = None) -> _Watch:
        """
        A context manager: its body (one driver call on C{connection}) runs
        under a deadline.
        """
        self.check()
        timeout = self.timeout if timeout is None else timeout
        deadline = float("inf") if timeout is None else time.monotonic() + timeout
        if self._closing is not None:
            deadline = min(deadline, self._closing)
        return _Watch(deadline, connection.fileno(), self, timeout)


def connection_class(guard: Guard):
    """
    A psycopg2 connection class (for C{connection_factory}) whose statements,
    COPYs, commits and rollbacks are watched by C{guard}.

    @ivar timeout: set on a connection to give its calls a limit other than the
        guard's (a schema migration may run long).
    """
    from psycopg2.extensions import connection, cursor

    class GuardedCursor(cursor):
        def execute(self, *args, **kwargs):
            with self.connection.guard.watch(self.connection, self.connection.timeout):
                return super().execute(*args, **kwargs)

        def executemany(self, *args, **kwargs):
            with self.connection.guard.watch(self.connection, self.connection.timeout):
                return super().executemany(*args, **kwargs)

        def copy_expert(self, *args, **kwargs):
            with self.connection.guard.watch(self.connection, self.connection.timeout):
                return super().copy_expert(*args, **kwargs)

        def callproc(self, *args, **kwargs):
            with self.connection.guard.watch(self.connection, self.connection.timeout):
                return super().callproc(*args, **kwargs)

    class GuardedConnection(connection):
        timeout: Optional[float] = None

        def __new__(cls, *args, **kwargs):
            # Refused before the object exists: psycopg2cffi's finaliser
            # fails on a connection its __init__ never set up.
            guard.check()
            return super().__new__(cls)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.guard = guard
            self.cursor_factory = GuardedCursor

        def commit(self):
            with guard.watch(self, self.timeout):
                return super().commit()

        def rollback(self):
            with guard.watch(self, self.timeout):
                return super().rollback()

    return GuardedConnection
