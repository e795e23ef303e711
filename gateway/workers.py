# -*- test-case-name: tests.test_workers -*-
"""
C{--workers N}: N gateway processes on one port, under this one.

CPython runs one reactor on one core; a busy gateway uses more cores by
running more processes. Each worker is a complete gateway (C{twistd -n
trackport ... --reuse-port}): the kernel spreads TCP connections, and UDP
peers by their address, across the workers' sockets (SO_REUSEPORT), so a
device's datagrams and the replies to them stay with one worker. A command
queued anywhere reaches the worker holding the device the way it reaches
another gateway process (LISTEN/NOTIFY on PostgreSQL, a poll on SQLite). This
parent only starts the workers, restarts one that dies, and stops them all.
"""

from __future__ import annotations

import os
import re
import sys
from typing import List, Optional

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from gateway.hexdump import printable

log = Logger()

#: Runs twistd in a child with the parent's interpreter and environment.
_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
#: What a worker prints once it listens (see L{gateway.service.GatewayService}).
_READY = "trackport ready on"
#: The time stamp a worker's log line starts with: the parent's log adds its own.
_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:]+[+-]\d{4} ")
#: Seconds a worker is given to stop before it is killed.
STOP_SECONDS = 12.0


def worker_argv(argv: List[str], index: int) -> List[str]:
    """
    The options of worker C{index}, from the parent's own: without
    C{--workers}, with C{--reuse-port}, and C{--http} on the first worker only
    (one API and one C{/metrics} per host; what it serves from the database
    covers every worker).
    """
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--workers", "--http", "--map-tiles"):
            if "=" not in arg:
                skip = True
            if name == "--workers" or index > 0:
                continue
            out.append(arg)
            if "=" not in arg and i + 1 < len(argv):
                out.append(argv[i + 1])
            continue
        out.append(arg)
    if "--reuse-port" not in out:
        out.append("--reuse-port")
    return out


class _Worker(ProcessProtocol):
    def __init__(self, pool: "Workers", index: int):
        self.pool = pool
        self.index = index
        self.ready = False
        self._partial = b""
        self.ended = defer.Deferred()

    def connectionMade(self):
        self.pool.started(self)

    def outReceived(self, data: bytes):
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            text = printable(_STAMP.sub("", line.decode("utf-8", "replace").rstrip("\r")), 2000)
            if _READY in text and not self.ready:
                self.ready = True
                self.pool.worker_ready(self)
                continue
            log.info("worker {index}: {line}", index=self.index, line=text)
        if len(self._partial) > 65536:
            self._partial = b""

    errReceived = outReceived

    def processEnded(self, reason):
        self.pool.worker_ended(self, reason)
        self.ended.callback(None)


class Workers(Service):
    """
    The parent of C{count} worker processes.

    @ivar argv: the options every worker gets (see L{worker_argv}).
    """

    restart_delays = (1.0, 2.0, 5.0, 10.0, 30.0)

    def __init__(self, reactor, count: int, argv: List[str], summary: str):
        self.reactor = reactor
        self.count = count
        self.argv = list(argv)
        self.summary = summary
        self.workers: List[Optional[_Worker]] = [None] * count
        self._failures = [0] * count
        self._announced = False
        self._stopping = False

    def startService(self):
        super().startService()
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        if self._stopping:
            return
        worker = _Worker(self, index)
        self.workers[index] = worker
        args = [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", "trackport"] + worker_argv(self.argv, index)
        # Unbuffered: a worker's log lines reach the parent's log as they happen.
        env = dict(os.environ, TRACKPORT_WORKER=str(index), PYTHONUNBUFFERED="1")
        self.reactor.spawnProcess(worker, sys.executable, args, env=env, childFDs={0: "w", 1: "r", 2: "r"})

    def started(self, worker: _Worker) -> None:
        log.info("worker {index} started (pid {pid})", index=worker.index, pid=worker.transport.pid)

    def worker_ready(self, worker: _Worker) -> None:
        self._failures[worker.index] = 0
        log.info("worker {index} ready (pid {pid})", index=worker.index, pid=worker.transport.pid)
        if not self._announced and all(w is not None and w.ready for w in self.workers):
            self._announced = True
            log.info("trackport ready on {summary}, {count} workers", summary=self.summary, count=self.count)

    def worker_ended(self, worker: _Worker, reason) -> None:
        if self._stopping:
            return
        delay = self.restart_delays[min(self._failures[worker.index], len(self.restart_delays) - 1)]
        self._failures[worker.index] += 1
        code = getattr(reason.value, "exitCode", None)
        how = f"signal {reason.value.signal}" if getattr(reason.value, "signal", None) else f"exit code {code}"
        log.error("worker {index} ended ({how}); restarting it in {delay:.0f} s",
                  index=worker.index, how=how, delay=delay)
        self.reactor.callLater(delay, self._spawn, worker.index)

    def stopService(self):
        super().stopService()
        self._stopping = True
        waiting = []
        for worker in self.workers:
            if worker is None or worker.ended.called:
                continue
            waiting.append(worker.ended)
            _signal(worker.transport, "TERM")
            self.reactor.callLater(STOP_SECONDS, _kill, worker)
        return defer.DeferredList(waiting)


def _signal(transport, name: str) -> None:
    try:
        transport.signalProcess(name)
    except error.ProcessExitedAlready:
        pass


def _kill(worker: _Worker) -> None:
    if not worker.ended.called:
        log.warn("worker {index} did not stop in {s:.0f} s: killed", index=worker.index, s=STOP_SECONDS)
        _signal(worker.transport, "KILL")

