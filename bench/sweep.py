"""
What the UDP sweeper's pass costs the reactor: a L{DatagramEndpoint} holding
C{--peers} peers of distinct devices on fixed ports (none due to be forgotten,
the worst case: every peer is looked at, none goes), with the collector
frozen as the service has it; CPU ms per pass, with the check for superseded
peers (what runs) and with the idle check alone (what ran before it).

Usage: .venv/bin/python bench/sweep.py [--peers 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(args) -> None:
    from twisted.internet.task import Clock

    from bench.traffic import gosafe
    from gateway.hub import Hub, MemoryStore
    from gateway.registry import discover
    from gateway.server import DatagramEndpoint
    from gateway.service import tune_gc

    class Transport:
        def write(self, data, addr):
            pass

    clock = Clock()
    clock.advance(1_750_000_000)
    endpoint = DatagramEndpoint(Hub(discover(), MemoryStore(), clock), max_peers=args.peers)
    endpoint.transport = Transport()
    traffic = gosafe.make(1)
    tune_gc()
    for i in range(args.peers):
        endpoint.datagramReceived(traffic.frame(f"35{i:013d}", 1),
                                  (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1024))
    clock.advance(200)  # past the claim window, within the idle time
    gc.collect()
    sweeper, also = endpoint._sweeper, endpoint._sweeper.also
    results = {"with the superseded check": [], "the idle check alone": []}
    for _ in range(args.rounds):
        for name, check in (("with the superseded check", also), ("the idle check alone", None)):
            sweeper.also = check
            start = time.process_time()
            ended = sweeper.sweep()
            results[name].append((time.process_time() - start) * 1000)
            assert ended == 0 and len(endpoint.sessions) == args.peers
    print(f"one sweep over {args.peers:,} UDP peers of distinct devices, none forgotten;"
          f" CPU ms per pass, {args.rounds} rounds:")
    for name, values in results.items():
        print(f"  {name}: " + ", ".join(f"{v:.1f}" for v in values))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    main(ap.parse_args())
