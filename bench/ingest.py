"""
Ingest benchmark: simulated devices replay real frames of one protocol over TCP
and UDP against a real trackport process (SQLite, then PostgreSQL) and against
a bare Twisted split-and-ack server (the ceiling), and print:

- durable records/s (closed loop: every device sends its next frame when the
  previous one is acked, i.e. after its records committed; rows counted in the
  database afterwards),
- ack latency p50/p99 at a fixed offered rate (open loop, default 5000 frames/s),
- memory per idle TCP session (RSS growth of the gateway over N identified,
  silent connections).

What a device sends comes from C{bench/traffic/<protocol>.py} (default: the real
multi-record GoSafe frame of the shared vector gosafe-036, with the IMEI and the
record times replaced per device and per frame, so every record is distinct and
none is deduplicated away).

Usage: .venv/bin/python bench/ingest.py [--protocol gosafe] [--db sqlite,postgresql]
       [--seconds 10] [--devices 200] [--rate 5000] [--idle 10000] [--pg postgresql://...]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Protocol

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, ROOT)

from bench import traffic as registry  # noqa: E402

#: The protocol's L{bench.traffic.Traffic}, chosen with C{--protocol}.
TRAFFIC = registry.load("gosafe")


def frame(imei: str, n: int) -> bytes:
    return TRAFFIC.frame(imei, n)


def imei(i: int) -> str:
    return f"86{i:013d}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# -- servers ------------------------------------------------------------------

class Server:
    def __init__(self, kind: str, db: str | None, workdir: str, port: int | None = None,
                 shared: bool = False, args=(), twistd: str | None = None):
        """
        @param twistd: the twistd to start the gateway with (another venv's,
            another interpreter's); by default the one beside this Python.
        """
        self.kind, self.db, self.port = kind, db, port or free_port()
        self.log = open(os.path.join(workdir, f"{kind}-{self.port}-{uuid.uuid4().hex[:6]}.log"), "wb")
        env = dict(os.environ, PYTHONPATH=ROOT)
        if kind == "bare":
            argv = [sys.executable, os.path.join(HERE, "bare_server.py"), str(self.port), TRAFFIC.name]
            ready = "bare server ready"
        elif kind == "floor":
            argv = [sys.executable, os.path.join(HERE, "floor_server.py"), str(self.port), db] + list(args)
            ready = "floor server ready"
        else:
            argv = [twistd or os.path.join(BIN, "twistd"), "-n", "--pidfile=", "trackport", "--port", str(self.port),
                    "--interface", "127.0.0.1", "--db", db] + (["--reuse-port"] if shared else []) + list(args)
            ready = "trackport ready on"
        self.proc = subprocess.Popen(argv, cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=_raise_nofile)
        path = self.log.name
        began = time.monotonic()
        deadline = time.time() + 60
        while ready not in open(path, errors="replace").read():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{kind} server did not start: {open(path).read()[-2000:]}")
            time.sleep(0.01)
        #: Seconds from exec to ready (to 10 ms).
        self.startup = time.monotonic() - began

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def rows(self) -> int | None:
        if self.db is None:
            return None
        from sqlalchemy import text
        from gateway.store import engine_for

        engine = engine_for(self.db)
        with engine.connect() as c:
            n = c.execute(text("SELECT count(*) FROM positions")).scalar_one()
        engine.dispose()
        return n


def _raise_nofile(wanted: int = 262144):
    """
    Enough file descriptors for the idle-session test (root may raise the hard
    limit; others get their hard limit).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(wanted, hard), max(wanted, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class ServerGroup:
    """
    C{n} gateway processes sharing one port (SO_REUSEPORT), as one target.
    """

    def __init__(self, kind, db, workdir, n):
        first = Server(kind, db, workdir, shared=n > 1)
        self.servers = [first] + [Server(kind, db, workdir, port=first.port, shared=True)
                                  for _ in range(n - 1)]
        self.kind, self.db, self.port = kind, db, first.port

    @property
    def pids(self):
        return [s.proc.pid for s in self.servers]

    def rows(self):
        return self.servers[0].rows()

    def stop(self):
        for s in self.servers:
            s.stop()


# -- load -----------------------------------------------------------------------

class Device(Protocol):
    """
    A TCP device: sends a frame, and (closed loop) the next one once it is acked.
    """

    def __init__(self, run, index):
        self.run, self.index, self.n, self.buffer = run, index, 0, b""
        self.sent = []
        self.greeted = TRAFFIC.hello is None

    def connectionMade(self):
        if self.greeted:
            self.run.connected(self)
        else:
            self.transport.write(TRAFFIC.hello(imei(self.index)))

    def send(self):
        self.sent.append(time.perf_counter())
        self.transport.write(frame(imei(self.index), self.n))
        self.n += 1

    def dataReceived(self, data):
        self.buffer += data
        while True:
            size = TRAFFIC.ack_size(self.buffer)
            if not size:
                return
            self.buffer = self.buffer[size:]
            if not self.greeted:
                self.greeted = True
                self.run.connected(self)
            elif self.sent:
                self.run.acked(self, time.perf_counter() - self.sent.pop(0))


class UdpDevice(DatagramProtocol):
    def __init__(self, run, index, port):
        self.run, self.index, self.port, self.n = run, index, port, 0
        self.sent = []
        self.traffic = TRAFFIC.udp or TRAFFIC
        self.greeted = self.traffic.hello is None

    def startProtocol(self):
        if self.greeted:
            self.run.connected(self)
        else:
            self.transport.write(self.traffic.hello(imei(self.index)), ("127.0.0.1", self.port))

    def send(self):
        self.sent.append(time.perf_counter())
        self.transport.write(self.traffic.frame(imei(self.index), self.n), ("127.0.0.1", self.port))
        self.n += 1

    def datagramReceived(self, data, addr):
        if self.traffic.ack_size(data) != len(data):
            return
        if not self.greeted:
            self.greeted = True
            self.run.connected(self)
        elif self.sent:
            self.run.acked(self, time.perf_counter() - self.sent.pop(0))


class Run:
    """
    One measurement: C{devices} devices, closed loop (C{rate} None) or open loop.
    """

    def __init__(self, port, transport, devices, seconds, rate=None, offset=0):
        self.port, self.transport, self.count = port, transport, devices
        self.seconds, self.rate, self.offset = seconds, rate, offset
        self.devices, self.latencies, self.acks = [], [], 0
        self.measuring = False
        self.done = defer.Deferred()

    def start(self):
        for i in range(self.count):
            if self.transport == "tcp":
                f = ClientFactory()
                f.protocol = lambda i=i: Device(self, self.offset + i)
                reactor.connectTCP("127.0.0.1", self.port, f)
            else:
                reactor.listenUDP(0, UdpDevice(self, self.offset + i, self.port), interface="127.0.0.1")
        return self.done

    def connected(self, device):
        self.devices.append(device)
        if len(self.devices) == self.count:
            self.begin = time.perf_counter()
            self.measuring = True
            if self.rate is None:
                for d in self.devices:
                    d.send()
            else:
                self._ticks, self._i = 0, 0
                self._loop = task.LoopingCall(self._tick)
                self._loop.start(0.01)
            reactor.callLater(self.seconds, self._end)

    def _tick(self):
        self._ticks += 1
        due = int(self.rate * (time.perf_counter() - self.begin)) - self._i
        for _ in range(max(0, due)):
            self.devices[self._i % self.count].send()
            self._i += 1

    def acked(self, device, latency):
        if not self.measuring:
            return
        self.acks += 1
        self.latencies.append(latency)
        if self.rate is None:
            device.send()

    def _end(self):
        self.measuring = False
        self.elapsed = time.perf_counter() - self.begin
        if self.rate is not None:
            self._loop.stop()
        for d in self.devices:
            if isinstance(d, Device):
                d.transport.loseConnection()
            else:
                d.transport.stopListening()
        reactor.callLater(0.5, self.done.callback, self)


@defer.inlineCallbacks
def measure(server, args, results):
    offset = 0
    for transport in () if args.idle_only else ("tcp", "udp"):
        before = server.rows()
        run = yield Run(server.port, transport, args.devices, args.seconds, offset=offset).start()
        offset += args.devices
        yield task.deferLater(reactor, 1.0, lambda: None)
        after = server.rows()
        acked_records = run.acks * TRAFFIC.records_per_frame
        durable = None if before is None else (after - before)
        results.append((server.kind, transport, "closed loop",
                        f"acked {acked_records / run.elapsed:,.0f} rec/s",
                        "" if durable is None else f"durable {durable / run.elapsed:,.0f} rec/s",
                        f"p50 {percentile(run.latencies, 50) * 1000:.1f} ms",
                        f"p99 {percentile(run.latencies, 99) * 1000:.1f} ms"))
        yield drained(server)
        run = yield Run(server.port, transport, args.devices, args.seconds, rate=args.rate,
                        offset=offset).start()
        offset += args.devices
        yield drained(server)
        results.append((server.kind, transport, f"{args.rate} frames/s offered",
                        f"acked {run.acks / run.elapsed:,.0f} frames/s", "",
                        f"p50 {percentile(run.latencies, 50) * 1000:.1f} ms",
                        f"p99 {percentile(run.latencies, 99) * 1000:.1f} ms"))
        print(*results[-2], sep="  ", flush=True)
        print(*results[-1], sep="  ", flush=True)
    if args.idle:
        yield idle_sessions(server, args, results, offset)


@defer.inlineCallbacks
def drained(server, quiet=1.0, limit=120.0):
    """
    Wait until the gateway has written everything an overloaded run left it
    with (its row count stops growing), so one measurement does not start
    inside the backlog of the previous one.
    """
    if server.db is None:
        return
    deadline, last = time.time() + limit, None
    while time.time() < deadline:
        rows = server.rows()
        if rows == last:
            return
        last = rows
        yield task.deferLater(reactor, quiet, lambda: None)


@defer.inlineCallbacks
def idle_sessions(server, args, results, offset):
    """
    Open C{args.idle} TCP sessions that each send one report and then stay
    silent; the per-session cost is the gateway's RSS growth between a warm-up
    tenth and the full count (so allocator arenas and the first write batches
    are not counted as per-session memory). Returns it, in bytes.
    """
    connections = []
    failed = []

    class Once(Protocol):
        def connectionMade(self):
            connections.append(self)
            device = imei(offset + len(connections))
            self.transport.write((TRAFFIC.hello(device) if TRAFFIC.hello else b"") + frame(device, 0))

    class Factory(ClientFactory):
        protocol = Once

        def clientConnectionFailed(self, connector, reason):
            failed.append(reason)

    f = Factory()

    @defer.inlineCallbacks
    def open_until(count):
        for i in range(len(connections) + len(failed), count):
            # One source address gives ~28k ephemeral ports, and the sessions of
            # the server measured before are in TIME_WAIT: spread over several.
            source = f"127.0.0.{2 + (offset + i) // 20000 % 250}"
            reactor.connectTCP("127.0.0.1", server.port, f, bindAddress=(source, 0))
            if i % 500 == 499:
                yield task.deferLater(reactor, 0.05, lambda: None)
        deadline = time.time() + 600
        while len(connections) + len(failed) < count and time.time() < deadline:
            yield task.deferLater(reactor, 0.2, lambda: None)
        yield task.deferLater(reactor, 5.0, lambda: None)

    warm = max(1, args.idle // 10)
    yield open_until(warm)
    base = sum(rss_kb(pid) for pid in server.pids)
    yield open_until(args.idle)
    count = len(connections) - warm
    grown = sum(rss_kb(pid) for pid in server.pids) - base
    per = grown * 1024 / max(1, count)
    results.append((server.kind, "tcp", f"{len(connections)} idle sessions"
                    + (f" ({len(failed)} failed to connect)" if failed else ""),
                    f"RSS +{grown / 1024:.1f} MiB over the last {count}",
                    f"{per:,.0f} bytes/session", "", ""))
    print(*results[-1], sep="  ", flush=True)
    for c in connections:
        c.transport.loseConnection()
    yield task.deferLater(reactor, 1.0, lambda: None)
    return per


def pg_database(base_url):
    from gateway.store import engine_for
    from sqlalchemy.engine import make_url

    name = "trackport_bench_" + uuid.uuid4().hex[:8]
    admin = engine_for(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False), name


def pg_drop(base_url, name):
    from gateway.store import engine_for

    admin = engine_for(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@defer.inlineCallbacks
def main(args):
    results = []
    workdir = tempfile.mkdtemp(prefix="trackport-bench-")
    targets = [] if args.idle_only else [("bare", None)]
    dropped = []
    for kind in args.db.split(","):
        if kind == "sqlite":
            targets.append(("trackport-sqlite", f"sqlite:///{workdir}/bench.db"))
        elif kind == "postgresql":
            url, name = pg_database(args.pg)
            dropped.append(name)
            targets.append(("trackport-postgresql", url))
    try:
        for kind, db in targets:
            if db is None:
                server = ServerGroup("bare", None, workdir, 1)
            else:
                server = ServerGroup(kind, db, workdir, args.processes)
            server.kind = kind if args.processes == 1 or db is None else f"{kind} x{args.processes}"
            try:
                yield measure(server, args, results)
            finally:
                server.stop()
    finally:
        for name in dropped:
            pg_drop(args.pg, name)
        print()
        print(f"protocol={TRAFFIC.name} devices={args.devices} seconds={args.seconds} "
              f"records/frame={TRAFFIC.records_per_frame} "
              f"gateway processes={args.processes} "
              f"cpus={os.cpu_count()} python={sys.version.split()[0]}")
        width = [max(len(str(r[i])) for r in results) for i in range(7)] if results else []
        for r in results:
            print("  ".join(str(v).ljust(w) for v, w in zip(r, width)))
        reactor.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="sqlite,postgresql")
    ap.add_argument("--pg", default=os.environ.get("TRACKPORT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--idle-only", action="store_true", help="only the idle-session measurement")
    ap.add_argument("--protocol", default="gosafe", choices=registry.names(),
                    help="whose frames the devices send (bench/traffic/)")
    ap.add_argument("--records", type=int, help="records per frame (protocols whose traffic has make())")
    ap.add_argument("--processes", type=int, default=1,
                    help="gateway processes sharing the port (--reuse-port)")
    args = ap.parse_args()
    module = __import__(f"bench.traffic.{args.protocol}", fromlist=["TRAFFIC"])
    if args.records is not None:
        if not hasattr(module, "make"):
            ap.error(f"--records: {args.protocol} frames have a fixed number of records")
        TRAFFIC = module.make(args.records)
    else:
        TRAFFIC = module.TRAFFIC
    _raise_nofile()
    reactor.callWhenRunning(main, args)
    reactor.run()
