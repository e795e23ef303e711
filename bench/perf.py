"""
What one durable record costs: CPU time of the trackport gateway process and of
the PostgreSQL backends serving its database, per record, next to the bare
Twisted split-and-ack server (C{bench/bare_server.py}) in the same run.

For GoSafe frames of 1 and 3 records, over TCP, over UDP from one source port
per device, and over UDP from a new source address and port for every frame
(devices behind NATs that forget their mappings), it measures, closed loop (each
of C{--devices} devices sends its next frame when the previous one is acked):

- CPU µs per record: C{utime + stime} from C{/proc/<pid>/stat} of the gateway
  (all its threads, and its child processes if it has any) and of the PostgreSQL backends of the bench database (found
  in C{pg_stat_activity}), read when the last device is connected and again
  once the database stops growing, divided by the records that became durable
  (rows counted); for the bare server, by the records it acked;
- durable records/s (acked records/s for the bare server) and ack p50/p99;
- the memory of an idle TCP session (RSS growth over C{--idle} silent, identified
  connections, on freshly started servers; the per-device tables double when
  they fill, which moves the figure by a few hundred bytes a session over a few
  thousand: C{--idle 12000} steadies it).

Measurements alternate (bare, trackport, bare, trackport...) and are repeated
C{--repeat} times on fresh processes; the table gives medians (and the spread of
the CPU figures). CPU time is what to compare on a shared machine: throughput
and latency follow whatever else runs.

With C{--default-gc}, a third server joins every round: the gateway with
CPython's default garbage collector settings (C{bench/twistd_default_gc.py}),
to measure what L{gateway.service.tune_gc} buys. With C{--baseline SRC}, a
gateway run from another checkout (the code before a change) joins every
round instead, on a database of its own: before and after, interleaved.
C{--only tcp,udp} keeps the scenarios of those transports (C{udp-new}: a new
source port each frame); C{--only idle} keeps none, for the idle-session
measure alone. C{udp-new} leaves a UDP peer behind with every frame: only
rounds of C{--seconds 20} or more take the gateway past 100,000 of them, where
the peer table's limit is met (docs/performance.md, "UDP peers a NAT leaves
behind").

With C{--floor}, five more servers join every round, each on a database of its
own: C{bench/floor_server.py}, which only decodes, stores (COPY and commit, by
the store's own row-building functions, on a writer thread) and acks, and the
same without a writer thread, blocking (C{--inline}) or not (C{--async}: an
asynchronous connection; C{--process}: a writer process), and the writer thread
handing its batches to such a process (C{--piped}); C{--floor NAMES} runs some
of them (C{--floor floor,floor-piped}).
Trackport less the floor is what its features cost; the floor less its inline
form, what the second thread costs; the floor less the bare server, decoding
and storing.

With C{--compare NAME=TWISTD} (repeatable), the gateway started by another
twistd (another venv, another interpreter: C{.venv-pypy/bin/twistd}) joins
every round too, and a table sets it beside the default one, with each one's
start-up time and resident memory when ready and after the round. With
C{--warm-up SECONDS}, every traffic first runs that long on every server,
unmeasured: a JIT (PyPy's) has compiled the hot paths before the clock starts;
C{--curve N} measures that warm-up instead (N successive windows from start).

Usage: .venv/bin/python bench/perf.py [--quick] [--repeat 3] [--seconds 8]
       [--devices 200] [--idle 3000] [--default-gc] [--baseline SRC] [--only tcp,udp,udp-new]
       [--floor [NAMES]] [--compare NAME=TWISTD] [--warm-up SECONDS] [--curve N] [--pg postgresql://...]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import DatagramProtocol

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench import ingest  # noqa: E402
from bench.traffic import gosafe  # noqa: E402

#: (label, transport, records per frame), in the order measured and printed.
SCENARIOS = [
    ("GoSafe TCP, 3 records/frame", "tcp", 3),
    ("GoSafe TCP, 1 record/frame", "tcp", 1),
    ("GoSafe UDP, 3 records/frame, fixed source port", "udp", 3),
    ("GoSafe UDP, 1 record/frame, fixed source port", "udp", 1),
    ("GoSafe UDP, 3 records/frame, new source port each frame", "udp-new", 3),
    ("GoSafe UDP, 1 record/frame, new source port each frame", "udp-new", 1),
]

TICK = os.sysconf("SC_CLK_TCK")

#: The floor servers of C{--floor}: their arguments (C{bench/floor_server.py}) and titles.
FLOORS = {
    "floor": ((), "The floor: decoding and durable storing alone (bench/floor_server.py)"),
    "floor-inline": (("--inline",), "The floor without a writer thread (bench/floor_server.py --inline)"),
    "floor-async": (("--async",), "The floor on an asynchronous connection (bench/floor_server.py --async)"),
    "floor-process": (("--process",), "The floor with a writer process (bench/floor_server.py --process)"),
    "floor-piped": (("--piped",), "The floor's writer thread handing batches to a writer process"
                                  " (bench/floor_server.py --piped)"),
}


def _floors(names: str) -> list:
    picked = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in picked if n not in FLOORS]
    if unknown or not picked:
        raise argparse.ArgumentTypeError(f"not a floor server: {', '.join(unknown) or names!r}")
    return picked


def cpu_seconds(pid: int) -> float:
    """
    User + system CPU time of a process (all its threads), 0 if it is gone.
    """
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def tree_cpu_seconds(pid: int) -> float:
    """
    L{cpu_seconds} of a process and of every process below it (a server's
    helper processes work for it).
    """
    total, pending = 0.0, [pid]
    while pending:
        pid = pending.pop()
        total += cpu_seconds(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    pending += [int(child) for child in fh.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


class Database:
    """
    The bench database seen from one connection of ours: its row count and the
    PostgreSQL backends serving the gateway (every backend of the database but
    this one).
    """

    def __init__(self, url):
        from gateway.store import engine_for

        self.engine = engine_for(url, isolation_level="AUTOCOMMIT")
        self.connection = self.engine.connect()
        self.name = self.engine.url.database

    def rows(self) -> int:
        return self.connection.exec_driver_sql("SELECT count(*) FROM positions").scalar_one()

    def backends(self) -> list:
        return [pid for (pid,) in self.connection.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = %(name)s AND pid <> pg_backend_pid()",
            {"name": self.name})]

    def close(self):
        self.connection.close()
        self.engine.dispose()


class CPU:
    """
    CPU seconds of a server process, and of its database backends, since
    L{start}.
    """

    def __init__(self, pid, database=None):
        self.pid, self.database = pid, database

    def start(self):
        self.process = tree_cpu_seconds(self.pid)
        self.backends = ({pid: cpu_seconds(pid) for pid in self.database.backends()}
                         if self.database else {})

    def stop(self):
        process = tree_cpu_seconds(self.pid) - self.process
        backends = 0.0
        if self.database:
            # A backend that appeared meanwhile started from zero; one that
            # ended took its CPU time with it (the gateway keeps its pool).
            for pid in set(self.backends) | set(self.database.backends()):
                backends += max(0.0, cpu_seconds(pid) - self.backends.get(pid, 0.0))
        return process, backends


class Measured(ingest.Run):
    """
    An C{ingest.Run} that starts the CPU clock when its last device is
    connected, and knows devices that change their source port every frame.
    """

    def __init__(self, cpu, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cpu = cpu

    def start(self):
        if self.transport != "udp-new":
            return super().start()
        for i in range(self.count):
            NewPortDevice(self, self.offset + i, self.port).connect()
        return self.done

    def connected(self, device):
        if len(self.devices) + 1 == self.count:
            self.cpu.start()
        super().connected(device)


class _Reply(DatagramProtocol):
    def __init__(self, device):
        self.device = device

    def datagramReceived(self, data, addr):
        self.device.reply(data)


class NewPortDevice:
    """
    A UDP device whose every frame comes from a new source address and port,
    so the gateway meets a new peer each time.
    """

    addresses = itertools.count()

    def __init__(self, run, index, port):
        self.run, self.index, self.port, self.n = run, index, port, 0
        self.sent, self.listening = [], None
        self.transport = self

    def connect(self):
        self.run.connected(self)

    def send(self):
        self.stopListening()
        # Many loopback addresses: a source address and port pair is not
        # reused while the gateway still remembers it.
        n = next(self.addresses)
        receiver = _Reply(self)
        self.listening = reactor.listenUDP(0, receiver, interface=f"127.1.{n // 250 % 250}.{n % 250 + 1}")
        self.sent.append(time.perf_counter())
        receiver.transport.write(ingest.frame(ingest.imei(self.index), self.n), ("127.0.0.1", self.port))
        self.n += 1

    def reply(self, data):
        if ingest.TRAFFIC.ack_size(data) == len(data) and self.sent:
            self.run.acked(self, time.perf_counter() - self.sent.pop(0))

    def stopListening(self):
        if self.listening is not None:
            self.listening.stopListening()
            self.listening = None


@defer.inlineCallbacks
def settled(database, quiet=1.0, limit=120.0):
    """
    Wait until the gateway has written everything (its row count stops
    growing); return the count.
    """
    deadline, last = time.time() + limit, None
    while time.time() < deadline:
        rows = database.rows()
        if rows == last:
            break
        last = rows
        yield task.deferLater(reactor, quiet, lambda: None)
    return last


@defer.inlineCallbacks
def measure(server, database, transport, args, offset):
    """
    One closed-loop run against C{server}: a dict of what it cost.
    """
    cpu = CPU(server.proc.pid, database)
    before = database.rows() if database else None
    run = yield Measured(cpu, server.port, transport, args.devices, args.seconds, offset=offset).start()
    if database:
        after = yield settled(database)
        records = after - before
    else:
        records = run.acks * ingest.TRAFFIC.records_per_frame
    process, backends = cpu.stop()
    # Nothing stored (a gateway refusing every frame): no cost per record.
    per_record = 1e6 / records if records > 0 else float("nan")
    return {
        "process": process * per_record,
        "backends": backends * per_record,
        "rate": records / run.elapsed,
        "p50": ingest.percentile(run.latencies, 50) * 1000,
        "p99": ingest.percentile(run.latencies, 99) * 1000,
    }


@defer.inlineCallbacks
def repetition(url, args, workdir, results, offset, baseline_url=None, floor_urls=None):
    servers = [("bare", ingest.Server("bare", None, workdir), None)]
    database = Database(url)
    try:
        servers.append(("trackport", ingest.Server("trackport", url, workdir), database))
        if args.default_gc:
            servers.append(("default-gc", default_gc_server(url, workdir), database))
        if baseline_url:
            servers.append(("baseline", baseline_server(baseline_url, workdir, args.baseline),
                            Database(baseline_url)))
        for name, twistd in args.compare:
            servers.append((name, ingest.Server("trackport", url, workdir, twistd=twistd), database))
        for name, floor_url in (floor_urls or {}).items():
            servers.append((name, ingest.Server("floor", floor_url, workdir, args=FLOORS[name][0]),
                            Database(floor_url)))
        for name, server, _ in servers:
            results.setdefault(("startup", name), []).append(server.startup)
            results.setdefault(("rss-ready", name), []).append(ingest.rss_kb(server.proc.pid) / 1024)
        ingest.TRAFFIC = gosafe.make(1)
        for name, server, _ in servers:
            server.pids = [server.proc.pid]
            per = yield ingest.idle_sessions(server, args, [], offset)
            offset += args.idle + 1
            results.setdefault(("idle", name), []).append(per / 1024)
        if args.warm_up:
            # Unmeasured: a JIT (PyPy's) compiles the hot paths first.
            for label, transport, records in scenarios(args):
                ingest.TRAFFIC = gosafe.make(records)
                for name, server, db in servers:
                    yield Measured(CPU(server.proc.pid), server.port, transport, args.devices,
                                   args.warm_up, offset=offset).start()
                    offset += args.devices
                    if db:
                        yield settled(db)
        for label, transport, records in scenarios(args):
            ingest.TRAFFIC = gosafe.make(records)
            for name, server, db in servers:
                result = yield measure(server, db, transport, args, offset)
                offset += args.devices
                results.setdefault((label, name), []).append(result)
                print(f"{label:<56} {name:<10} {result['process']:7.1f} µs/rec"
                      f" + PG {result['backends']:5.1f}  {result['rate']:9,.0f} rec/s"
                      f"  p50/p99 {result['p50']:.0f}/{result['p99']:.0f} ms", flush=True)
        for name, server, _ in servers:
            results.setdefault(("rss-after", name), []).append(ingest.rss_kb(server.proc.pid) / 1024)
    finally:
        for _, server, db in servers:
            server.stop()
            if db is not None and db is not database:
                db.close()
        database.close()
    return offset


def baseline_server(url, workdir, source):
    """
    A gateway running the code of the checkout C{source}.
    """
    real, ingest.ROOT = ingest.ROOT, os.path.abspath(source)
    try:
        return ingest.Server("trackport", url, workdir)
    finally:
        ingest.ROOT = real


def default_gc_server(url, workdir):
    """
    A gateway started by C{bench/twistd_default_gc.py} in place of twistd.
    """
    bindir = tempfile.mkdtemp(dir=workdir)
    with open(os.path.join(bindir, "twistd"), "w") as fh:
        fh.write(f'#!/bin/sh\nexec "{sys.executable}" "{os.path.join(HERE, "twistd_default_gc.py")}" "$@"\n')
    os.chmod(fh.name, 0o755)
    real, ingest.BIN = ingest.BIN, bindir
    try:
        return ingest.Server("trackport", url, workdir)
    finally:
        ingest.BIN = real


def scenarios(args):
    return [s for s in SCENARIOS if not args.only or s[1] in args.only.split(",")]


def median(results, key, field):
    return statistics.median(r[field] for r in results[key])


def spread(results, key, field):
    values = [r[field] for r in results[key]]
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def interpreter() -> str:
    """
    The interpreter every server but a C{--compare} one runs on: its version,
    its path (the real one, behind a venv) and whether libpython is a shared
    library. Debian's C{python3} (PGO and LTO, libpython linked in) spends
    9-29 % less CPU a record on trackport than a default pyenv build
    (C{--enable-shared}, neither; docs/performance.md, "The interpreter's
    build"), so a figure means little without this.
    """
    try:
        with open("/proc/self/maps") as maps:
            shared = "shared libpython" if "libpython" in maps.read() else "libpython linked in"
    except OSError:
        shared = "libpython: unknown"
    return (f"{platform.python_implementation()} {platform.python_version()}"
            f" ({os.path.realpath(sys.executable)}, {shared})")


def table(results, args, load):
    lines = [
        f"trackport perf: {args.repeat} repetition(s), {args.seconds:g} s each, {args.devices} devices,"
        f" closed loop; medians (min–max of the CPU figures). cpus={os.cpu_count()}"
        f" python={interpreter()} loadavg {load[0]} -> {load[1]}"
        + (f"; {args.warm_up:g} s warm-up per traffic" if args.warm_up else ""),
        "",
        "| traffic | bare µs/rec | gateway µs/rec | PG backends µs/rec | durable rec/s (bare) "
        "| ack p50/p99 ms (bare) |",
        "|---|---|---|---|---|---|",
    ]
    for label, _, _ in scenarios(args):
        bare, gateway = (label, "bare"), (label, "trackport")
        lines.append(
            f"| {label} | {spread(results, bare, 'process')} | {spread(results, gateway, 'process')}"
            f" | {spread(results, gateway, 'backends')}"
            f" | {median(results, gateway, 'rate'):,.0f} ({median(results, bare, 'rate'):,.0f})"
            f" | {median(results, gateway, 'p50'):.0f} / {median(results, gateway, 'p99'):.0f}"
            f" ({median(results, bare, 'p50'):.0f} / {median(results, bare, 'p99'):.0f}) |")
    idle = {name: statistics.median(results[("idle", name)]) for name in ("bare", "trackport")}
    lines += ["", f"idle TCP session: bare {idle['bare']:.2f} KB, trackport {idle['trackport']:.2f} KB"
                  f" (RSS growth over {args.idle - max(1, args.idle // 10)} sessions, median)"]
    others = ([("default-gc", "The same gateway with CPython's default GC settings")] if args.default_gc else [])
    if args.baseline:
        others.append(("baseline", f"The gateway of {args.baseline}, on a database of its own"))
    others += [(name, f"The gateway started by {twistd}") for name, twistd in args.compare]
    if args.floor:
        others += [(name, title) for name, (_, title) in FLOORS.items() if name in args.floor]
    for name, title in others:
        lines += ["", f"{title} ({name}), in the same rounds, beside this one:"] + beside(results, args, name)
    return "\n".join(lines)


def beside(results, args, name) -> list:
    """
    Table lines setting the gateway C{name} beside this checkout's.
    """
    lines = ["", f"| traffic | gateway µs/rec | {name} | PG backends µs/rec | {name} | durable rec/s | {name} "
                 f"| ack p50/p99 ms | {name} |", "|---|---|---|---|---|---|---|---|---|"]
    for label, _, _ in scenarios(args):
        cells = []
        for field, show in (("process", None), ("backends", None), ("rate", "{:,.0f}"), ("p50", None)):
            for side in ("trackport", name):
                key = (label, side)
                if field == "p50":
                    cells.append(f"{median(results, key, 'p50'):.0f} / {median(results, key, 'p99'):.0f}")
                elif show:
                    cells.append(show.format(median(results, key, field)))
                else:
                    cells.append(spread(results, key, field))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for what, key, fmt, unit in [("idle TCP session", "idle", ".2f", " KB"),
                                 ("start-up (exec to ready)", "startup", ".2f", " s"),
                                 ("RSS when ready", "rss-ready", ".0f", " MiB"),
                                 ("RSS after the round", "rss-after", ".0f", " MiB")]:
        if (key, name) in results:
            lines.append(f"{what}: this gateway {statistics.median(results[(key, 'trackport')]):{fmt}}{unit},"
                         f" {name} {statistics.median(results[(key, name)]):{fmt}}{unit} (median)")
    return lines


@defer.inlineCallbacks
def curve(url, args, workdir):
    """
    Warm-up: from start, C{args.curve} successive windows of GoSafe TCP
    1-record traffic on each gateway, alternating (no bare server, no idle
    sessions), one line per window.
    """
    database = Database(url)
    servers = []
    try:
        servers.append(("trackport", ingest.Server("trackport", url, workdir)))
        for name, twistd in args.compare:
            servers.append((name, ingest.Server("trackport", url, workdir, twistd=twistd)))
        ingest.TRAFFIC = gosafe.make(1)
        offset = 0
        for window in range(1, args.curve + 1):
            for name, server in servers:
                result = yield measure(server, database, "tcp", args, offset)
                offset += args.devices
                print(f"window {window} ({args.seconds:g} s) {name:<10} {result['process']:7.1f} µs/rec"
                      f" + PG {result['backends']:5.1f}  {result['rate']:7,.0f} rec/s"
                      f"  p99 {result['p99']:.0f} ms  RSS {ingest.rss_kb(server.proc.pid) // 1024} MiB",
                      flush=True)
    finally:
        database.close()
        for _, server in servers:
            server.stop()


@defer.inlineCallbacks
def main(args):
    workdir = tempfile.mkdtemp(prefix="trackport-perf-")
    url, name = ingest.pg_database(args.pg)
    baseline_url, baseline_name = ingest.pg_database(args.pg) if args.baseline else (None, None)
    floors = {name: ingest.pg_database(args.pg) for name in (args.floor or ())}
    results, offset = {}, 0
    load = [open("/proc/loadavg").read().split()[0], None]
    try:
        if args.curve:
            yield curve(url, args, workdir)
            return
        for i in range(args.repeat):
            print(f"-- repetition {i + 1}/{args.repeat}", flush=True)
            offset = yield repetition(url, args, workdir, results, offset, baseline_url,
                                      {name: floor_url for name, (floor_url, _) in floors.items()})
        load[1] = open("/proc/loadavg").read().split()[0]
        print()
        print(table(results, args, load), flush=True)
    finally:
        ingest.pg_drop(args.pg, name)
        if baseline_name:
            ingest.pg_drop(args.pg, baseline_name)
        for _, floor_name in floors.values():
            ingest.pg_drop(args.pg, floor_name)
        reactor.stop()


def named(value: str):
    """
    C{NAME=TWISTD} as C{(NAME, TWISTD)}.
    """
    name, sep, twistd = value.partition("=")
    if not (sep and name and twistd) or name in ("bare", "trackport", "default-gc", "baseline", *FLOORS):
        raise argparse.ArgumentTypeError(f"{value!r}: NAME=TWISTD, NAME not bare, trackport, default-gc,"
                                         " baseline or a floor")
    return name, os.path.abspath(twistd)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg", default=os.environ.get("TRACKPORT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--idle", type=int, default=3000, help="idle TCP sessions opened per server")
    ap.add_argument("--default-gc", action="store_true",
                    help="also measure the gateway with CPython's default GC settings, interleaved")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=TWISTD",
                    type=named,
                    help="also measure the gateway started by this twistd (another venv or"
                         " interpreter), interleaved")
    ap.add_argument("--warm-up", type=float, default=0.0, metavar="SECONDS",
                    help="first run every traffic this long on every server, unmeasured")
    ap.add_argument("--curve", type=int, default=0, metavar="N",
                    help="only this: N windows of --seconds of TCP 1-record traffic from start, per gateway"
                         " (the default one and each --compare), alternating")
    ap.add_argument("--baseline", metavar="SRC",
                    help="also measure the gateway of another checkout (the code before a change), "
                         "on a database of its own, interleaved")
    ap.add_argument("--floor", nargs="?", const=",".join(FLOORS), type=_floors, metavar="NAMES",
                    help="also measure bench/floor_server.py (decoding and durable storing alone), with and"
                         " without its writer thread, each on a database of its own, interleaved; NAMES"
                         f" (comma-separated) picks some of {', '.join(FLOORS)}")
    ap.add_argument("--only", help="transports to measure: tcp, udp, udp-new (comma-separated);"
                                   " idle: none, the idle sessions only")
    ap.add_argument("--quick", action="store_true",
                    help="one repetition of 3 s and 1000 idle sessions (about 2 minutes)")
    args = ap.parse_args()
    if args.quick:
        args.repeat, args.seconds, args.idle = 1, 3.0, 1000
    ingest._raise_nofile()
    reactor.callWhenRunning(main, args)
    reactor.run()
