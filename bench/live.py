"""
Live-feed benchmark: ingest with 0 and then N WebSocket clients attached to
C{/api/live}, in one run against one gateway process, and print

- durable records/s of the closed-loop load (as bench/ingest.py) with and
  without the clients,
- the feed's latency: from a frame's ack reaching its device (the records are
  committed by then) to the first client receiving its record, p50/p99,
  beside the ack latency itself,
- the gateway process's CPU time per durable record (the clients run in the
  bench process, on the same cores, so throughput alone overstates the cost).

Usage: .venv/bin/python bench/live.py [--db postgresql|sqlite] [--clients 50] [--seconds 10] [--devices 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer, reactor, task

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import ingest  # noqa: E402  (the load generator and servers of bench/ingest.py)
from perf import cpu_seconds  # noqa: E402


class Watcher(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.opened.append(self)

    def onMessage(self, payload, isBinary):
        self.factory.received += 1
        if not self.factory.probe:
            return  # the other clients only count: the bench shares the gateway's two cores
        message = json.loads(payload)
        if message["type"] == "record":
            record = message["data"]
            self.factory.arrivals.setdefault((record["device_id"], record["time"]), time.perf_counter())


@defer.inlineCallbacks
def attach(http_port, token, count):
    factories = []
    opened = []
    for i in range(count):
        f = WebSocketClientFactory(f"ws://127.0.0.1:{http_port}/api/live?token={token}")
        f.protocol = Watcher
        f.opened, f.received, f.probe, f.arrivals = opened, 0, i == 0, {}
        connectWS(f)
        factories.append(f)
    while len(opened) < count:
        yield task.deferLater(reactor, 0.05, lambda: None)
    return factories


class AckTimes(ingest.Run):
    """
    The closed-loop run of bench/ingest.py, remembering when each frame's ack
    arrived, keyed by the (device, record time) of its last record.
    """

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.ack_times = {}

    def acked(self, device, latency):
        if self.measuring:
            n = device.n - len(device.sent) - 1
            self.ack_times[(ingest.imei(device.index), n)] = time.perf_counter()
        super().acked(device, latency)


@defer.inlineCallbacks
def main(args):
    workdir = tempfile.mkdtemp(prefix="trackport-live-")
    if args.db == "postgresql":
        db, dropped = ingest.pg_database(args.pg)
    else:
        db, dropped = f"sqlite:///{workdir}/live.db", None
    http_port = ingest.free_port()
    server = ingest.Server("trackport", db, workdir, args=["--http", f"127.0.0.1:{http_port}"])
    results = []
    try:
        token = subprocess.run([os.path.join(ingest.BIN, "trackport"), "token", "create", "bench", "--db", db],
                               capture_output=True, text=True, check=True).stdout.strip()
        offset = 0
        for clients in (0, args.clients):
            factories = yield attach(http_port, token, clients) if clients else []
            before, cpu = server.rows(), cpu_seconds(server.proc.pid)
            run = yield AckTimes(server.port, "tcp", args.devices, args.seconds, offset=offset).start()
            yield task.deferLater(reactor, 2.0, lambda: None)
            rows = server.rows() - before
            durable = rows / run.elapsed
            # The gateway's own CPU per record: the bench process decoding every
            # client's messages shares the same cores and skews throughput.
            per_record = (cpu_seconds(server.proc.pid) - cpu) / max(rows, 1) * 1e6
            line = [f"{clients} live clients", f"durable {durable:,.0f} rec/s",
                    f"gateway CPU {per_record:.1f} µs/rec",
                    f"ack p50 {ingest.percentile(run.latencies, 50) * 1000:.1f} ms",
                    f"p99 {ingest.percentile(run.latencies, 99) * 1000:.1f} ms"]
            if clients:
                probe = factories[0]
                lags = []
                for (device, n), acked in run.ack_times.items():
                    key = (device, _last_record_time(ingest.TRAFFIC.frame(device, n)))
                    if key in probe.arrivals:
                        lags.append(probe.arrivals[key] - acked)
                total = sum(f.received for f in factories)
                line += [f"feed after ack p50 {ingest.percentile(lags, 50) * 1000:.1f} ms",
                         f"p99 {ingest.percentile(lags, 99) * 1000:.1f} ms",
                         f"{total:,} messages to {clients} clients"]
            results.append(line)
            print("  ".join(line), flush=True)
            offset += args.devices
            yield ingest.drained(server)
    finally:
        server.stop()
        if dropped:
            ingest.pg_drop(args.pg, dropped)
        print()
        print(f"db={args.db} devices={args.devices} seconds={args.seconds} records/frame="
              f"{ingest.TRAFFIC.records_per_frame} cpus={os.cpu_count()}")
        for line in results:
            print("  ".join(line))
        reactor.stop()


def _last_record_time(frame: bytes) -> str:
    """
    The ISO time of the last record of a GoSafe bench frame (HHMMSSDDMMYY).
    """
    stamp = frame.split(b"$")[-1].split(b",")[0].decode()
    return f"20{stamp[10:12]}-{stamp[8:10]}-{stamp[6:8]}T{stamp[0:2]}:{stamp[2:4]}:{stamp[4:6]}Z"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    ap.add_argument("--pg", default=os.environ.get("TRACKPORT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--devices", type=int, default=100)
    args = ap.parse_args()
    ingest._raise_nofile()
    reactor.callWhenRunning(main, args)
    reactor.run()
