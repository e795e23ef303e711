"""
What an idle device costs in Python objects: the heap (C{tracemalloc}) one
process grows by per identified, silent TCP session, for the gateway's
sessions and for a bare Twisted protocol that only splits GoSafe frames.

RSS growth (C{bench/perf.py}) is what an operator sees, but malloc's arenas move
it by a few hundred bytes between rounds of the same code; the heap counts the
objects a session keeps, Twisted's connection objects included on both sides.
The gateway runs in process on a store that keeps nothing (what is stored is
not what an idle session holds), its log lines discarded (twistd writes them
out; Twisted keeps them in memory until logging begins). With C{--pg URL} it
runs on the real store instead, on a PostgreSQL database of its own made from
that server's URL, so that the store's per-device memos count too.

Usage: .venv/bin/python bench/idleheap.py [--sessions 1500] [--baseline DIR] [--pg URL]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import socket
import subprocess
import sys
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))


def _waiting(s) -> bool:
    try:
        return bool(s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


def measure(kind: str, sessions: int, db=None) -> float:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    # Log events go nowhere, as they go to the log file under twistd: until
    # logging begins, Twisted keeps them in memory (up to 65,536), which
    # would count the gateway's log lines as what its sessions hold.
    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)
    from twisted.internet.defer import succeed
    from twisted.internet.protocol import Factory, Protocol

    from bench.traffic import gosafe
    from gateway.hub import Hub, MemoryStore
    from gateway.registry import discover
    from gateway.server import StreamFactory

    class Nothing(MemoryStore):
        def submit(self, *args, done=None, **kwargs):
            if done is None:
                return succeed(None)
            done(None)

        def touch(self, *args):
            pass

    class Split(Protocol):
        def connectionMade(self):
            self.buffer = b""

        def dataReceived(self, data):
            self.buffer += data
            end = self.buffer.find(b"#")
            if end >= 0:
                self.buffer = self.buffer[end + 1:]
                self.transport.write(b"1234")

    if db is None:
        store = Nothing()
    else:
        from gateway.store import Store, engine_for, migrate

        engine = engine_for(db)
        migrate(engine)
        store = Store(engine, reactor)
        store.start()
    factory = (Factory.forProtocol(Split) if kind == "bare"
               else StreamFactory(Hub(discover(), store, reactor)))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=1024).getHost().port
    traffic = gosafe.make(1)
    clients = []

    def turn(n):
        for _ in range(n):
            reactor.iterate(0.001)

    def connect(n):
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(traffic.frame(f"35{len(clients):013d}", 0))
            clients.append(s)
            if i % 20 == 19:
                turn(5)
        turn(500)
        for s in clients[-n:]:
            # The ack; the gateway is in this process, so it is turned until
            # the ack is there (with the real store, after the commit).
            while not _waiting(s):
                turn(10)
            s.recv(16)

    connect(200)  # first-time costs (imports, caches) outside the count
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    connect(sessions)
    turn(100)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    # The client sockets live in this process too: count them out.
    tracemalloc.stop()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    extra = [socket.socket() for _ in range(sessions)]
    client = tracemalloc.get_traced_memory()[0] - before
    del extra
    return (grown - client) / sessions


def main(args) -> None:
    sys.path.insert(0, os.path.dirname(HERE))
    from bench import ingest

    sides = [("bare Twisted protocol", "bare", os.path.dirname(HERE)),
             ("trackport", "gateway", os.path.dirname(HERE))]
    if args.baseline:
        sides.append((f"trackport of {args.baseline}", "gateway", os.path.abspath(args.baseline)))
    print(f"Python heap per idle identified TCP session ({args.sessions} sessions, tracemalloc):")
    if args.pg:
        print("  (the gateways on the real store, each on a PostgreSQL database of its own)")
    for label, kind, root in sides:
        db, name = ingest.pg_database(args.pg) if args.pg and kind == "gateway" else (None, None)
        try:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind,
                                  "--sessions", str(args.sessions)] + (["--db", db] if db else []),
                                 env=dict(os.environ, PYTHONPATH=root), check=True, capture_output=True,
                                 text=True)
        finally:
            if name:
                ingest.pg_drop(args.pg, name)
        print(f"  {label}: {float(out.stdout):,.0f} B")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=1500)
    ap.add_argument("--baseline", metavar="DIR", help="also measure the gateway of another checkout")
    ap.add_argument("--pg", metavar="URL", help="the gateways on the real store, on this PostgreSQL server")
    ap.add_argument("--child", choices=["bare", "gateway"], help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.sessions + 1000)), hard))
    if args.child:
        sys.path.insert(0, os.environ.get("PYTHONPATH") or os.path.dirname(HERE))
        print(measure(args.child, args.sessions, args.db))
    else:
        main(args)
