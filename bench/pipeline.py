"""
What the gateway's own code costs per record, without sockets or a database:
GoSafe frames go through real sessions, the hub and the store's submit (made
storable, rows built, COPY text), then the writer's batch assembly and the
completion that sends the acks, all in this process; CPU time
(C{time.process_time}) per record.

It isolates the path that C{bench/perf.py} measures inside a running gateway,
where the reactor's I/O, the writer thread and the machine's load blur small
differences. C{--no-decode} replays decoded results (the decoder's share is
C{bench/decode.py}'s business), so what is left is the session, hub and store.

C{--udp-new} sends every frame as a datagram from a new source address and
port instead (a NAT that forgets its mappings: C{bench/perf.py}'s C{udp-new}),
through the server's L{gateway.server.DatagramEndpoint}: a new session, claim
and detection per frame, the sessions kept as a running gateway keeps them
(the clock advances 1/6000 s a frame); then, not counted in the per-record
figure, the sweep that forgets them all is timed too (µs per session).

C{--baseline DIR} measures another checkout (C{git worktree add /tmp/base REV})
the same way, alternating with this one, one process per round.

Usage: .venv/bin/python bench/pipeline.py [--records 1,3] [--no-decode] [--udp-new]
       [--rounds 5] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

FRAMES = 3000
DEVICES = 200
REPETITIONS = 7


def measure(records: int, decode: bool) -> float:
    """
    Median CPU µs per record over L{REPETITIONS} batches of L{FRAMES} frames.
    """
    from sqlalchemy import create_engine
    from twisted.internet.task import Clock

    from bench.traffic import gosafe
    from gateway import store as stores
    from gateway.hub import Hub
    from gateway.registry import discover
    from gateway.session import Session

    class Reactor:
        def callFromThread(self, f, *args, **kwargs):
            f(*args, **kwargs)

    store = stores.Store(create_engine("sqlite://"), Reactor())
    store.dialect = "postgresql"  # rows as COPY text, as on the production database
    hub = Hub(discover(), store, Clock())
    traffic = gosafe.make(records)
    acks = []
    sessions = [Session(hub, "tcp", f"127.0.0.1:{10000 + i}", acks.append, lambda: None)
                for i in range(DEVICES)]
    batches = [[traffic.frame(f"35{i:013d}", r * 1000 + k) for k in range(FRAMES // DEVICES)
                for i in range(DEVICES)] for r in range(REPETITIONS + 1)]
    if not decode:
        decoder = hub.decoders["gosafe"]
        results = {frame: decoder.decode(frame, sessions[0].context) for batch in batches for frame in batch}

        class Replay:
            name, transports, frame, detect = decoder.name, decoder.transports, decoder.frame, decoder.detect

            def decode(self, frame, context):
                return results[frame]

        for session in sessions:
            session.data_received(b"")
            session.decoder = Replay()

    def run(batch):
        frames = iter(batch)
        for _ in range(FRAMES // DEVICES):
            for session in sessions:
                session.data_received(next(frames))
        items = list(store._queue)
        store._queue.clear()
        rows, _ = store._rows(items)
        "".join([r if type(r) is str else stores._copy_line(r) for r in rows])
        store._finish(items, None)

    run(batches[0])  # detection, device rows, first-time costs
    gc.freeze()
    per = []
    for batch in batches[1:]:
        start = time.process_time()
        run(batch)
        per.append((time.process_time() - start) * 1e6 / (FRAMES * records))
    assert len(acks) == FRAMES * (REPETITIONS + 1), len(acks)
    return statistics.median(per)


def measure_new_peers(records: int, decode: bool) -> tuple:
    """
    Median CPU µs per record over L{REPETITIONS} batches of L{FRAMES}
    datagrams, each from a new source address; and the sweep's µs per
    forgotten session (as C{records + 0.5}: see L{child}).
    """
    from sqlalchemy import create_engine
    from twisted.internet.task import Clock

    from bench.traffic import gosafe
    from gateway import store as stores
    from gateway.hub import Hub
    from gateway.registry import discover
    from gateway.server import DatagramEndpoint
    from gateway.service import tune_gc

    class Reactor:
        def callFromThread(self, f, *args, **kwargs):
            f(*args, **kwargs)

    class Transport:
        def __init__(self):
            self.acks = 0

        def write(self, data, addr):
            self.acks += 1

    clock = Clock()
    clock.advance(1_750_000_000)
    store = stores.Store(create_engine("sqlite://"), Reactor())
    store.dialect = "postgresql"
    hub = Hub(discover(), store, clock)
    endpoint = DatagramEndpoint(hub)
    endpoint.transport = Transport()
    endpoint.startProtocol()
    traffic = gosafe.make(records)
    batches = [[traffic.frame(f"35{i:013d}", r * 1000 + k) for k in range(FRAMES // DEVICES)
                for i in range(DEVICES)] for r in range(REPETITIONS + 1)]
    if not decode:
        from gateway.context import Context

        decoder = hub.decoders["gosafe"]
        results = {frame: decoder.decode(frame, Context(transport="udp")) for batch in batches for frame in batch}
        real = decoder.decode
        decoder.decode = lambda frame, context: results[frame] if frame in results else real(frame, context)
    addresses = iter(range(1 << 30))

    def run(batch):
        for frame in batch:
            n = next(addresses)
            endpoint.datagramReceived(frame, (f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 1024 + n % 60000))
            clock.advance(1 / 6000)
        items = list(store._queue)
        store._queue.clear()
        rows, _ = store._rows(items)
        "".join([r if type(r) is str else stores._copy_line(r) for r in rows])
        store._finish(items, None)

    run(batches[0])  # device rows, first-time costs
    tune_gc()  # as the service does
    per = []
    for batch in batches[1:]:
        start = time.process_time()
        run(batch)
        per.append((time.process_time() - start) * 1e6 / (FRAMES * records))
    assert endpoint.transport.acks == FRAMES * (REPETITIONS + 1), endpoint.transport.acks
    peers = len(endpoint.sessions)
    assert peers == FRAMES * (REPETITIONS + 1), peers
    start = time.process_time()
    clock.advance(601)
    clock.advance(601)
    sweep = (time.process_time() - start) * 1e6 / peers
    assert not endpoint.sessions and not hub.sessions, (len(endpoint.sessions), len(hub.sessions))
    return statistics.median(per), sweep


def child(args) -> None:
    if args.udp_new:
        out = {}
        for r in args.records:
            out[r], out[r + 0.5] = measure_new_peers(r, args.decode)
        print(json.dumps(out))
    else:
        print(json.dumps({r: measure(r, args.decode) for r in args.records}))


def main(args) -> None:
    sides = [("this checkout", os.path.dirname(HERE))]
    if args.baseline:
        sides.append((args.baseline, os.path.abspath(args.baseline)))
    keys = [r + half for r in args.records for half in ((0, 0.5) if args.udp_new else (0,))]
    results = {name: {k: [] for k in keys} for name, _ in sides}
    for _ in range(args.rounds):
        for name, root in sides:
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", "--records",
                 ",".join(map(str, args.records))] + ([] if args.decode else ["--no-decode"])
                + (["--udp-new"] if args.udp_new else []),
                env=dict(os.environ, PYTHONPATH=root), check=True, capture_output=True, text=True).stdout
            for k, value in json.loads(out).items():
                results[name][float(k)].append(value)
    what = "datagram from a new source address each frame -> session" if args.udp_new else "session"
    print(f"{what} -> hub -> store path, in process, {'with' if args.decode else 'without'} decoding;"
          f" CPU µs per record, median of {args.rounds} rounds (min–max)")
    for name, _ in sides:
        cells = [(f"{int(k)} rec/frame" if k == int(k) else "(the sweep: µs per forgotten session)")
                 + f" {statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f})"
                 for k, v in results[name].items()]
        print(f"  {name}: " + ", ".join(cells))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=lambda s: [int(x) for x in s.split(",")], default=[1, 3])
    ap.add_argument("--no-decode", dest="decode", action="store_false")
    ap.add_argument("--udp-new", action="store_true",
                    help="every frame a datagram from a new source address, through the UDP endpoint")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", metavar="DIR")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, os.environ.get("PYTHONPATH") or os.path.dirname(HERE))
        child(args)
    else:
        main(args)
