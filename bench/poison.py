"""
Poison-frame attack: honest devices' ack latency with and without one attacker
repeating a poison frame of every protocol (C{tests/poison.py}: a 100-digit
unit id, a NUL in a unit id, in an event, in attribute keys and values, an
over-long event, and a record the database refuses) several times a second.

L{run} is the scenario, for C{bench/attacks.py} or anyone: it drives honest
closed-loop TCP devices (real GoSafe frames, as C{bench/ingest.py}) against a
gateway already listening on 127.0.0.1 and returns the honest acks and their
p50/p99. Run standalone, it starts a real gateway on a fresh PostgreSQL
database (or SQLite), measures without and with the attack in alternating
rounds, and prints the medians and every round.

Usage: .venv/bin/python bench/poison.py [--db postgresql|sqlite] [--seconds 10]
       [--devices 50] [--rate 5] [--rounds 3] [--pg postgresql://...]
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from ingest import ACK, Server, frame, imei, percentile, pg_database, pg_drop  # noqa: E402
from tests.poison import POISON  # noqa: E402


class _Honest(threading.Thread):
    """
    A TCP device that sends a frame, waits for its ack, sends the next.
    """

    def __init__(self, port, index, until):
        super().__init__(daemon=True)
        self.port, self.index, self.until = port, index, until
        self.latencies = []

    def run(self):
        try:
            sock = socket.create_connection(("127.0.0.1", self.port))
        except OSError:
            return
        n, buffer = 0, b""
        try:
            while time.monotonic() < self.until:
                sent = time.monotonic()
                sock.sendall(frame(imei(self.index), n))
                n += 1
                while len(buffer) < len(ACK) and time.monotonic() < self.until:
                    if select.select([sock], [], [], 0.1)[0]:
                        data = sock.recv(4096)
                        if not data:
                            return
                        buffer += data
                if len(buffer) < len(ACK):
                    return
                buffer = buffer[len(ACK):]
                self.latencies.append(time.monotonic() - sent)
        except OSError:
            pass
        finally:
            sock.close()


class _Attacker(threading.Thread):
    """
    Sends every poison frame C{rate} times a second (TCP ones on a new
    connection each, as a device reconnecting), never waiting for replies.
    """

    def __init__(self, port, rate, until):
        super().__init__(daemon=True)
        self.port, self.rate, self.until = port, rate, until
        self.sent = 0

    def run(self):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        held = []
        try:
            while time.monotonic() < self.until:
                began = time.monotonic()
                for _, transport, data, _, _ in POISON:
                    try:
                        if transport == "udp":
                            udp.sendto(data, ("127.0.0.1", self.port))
                        else:
                            s = socket.create_connection(("127.0.0.1", self.port))
                            s.sendall(data)
                            held.append(s)
                        self.sent += 1
                    except OSError:
                        pass
                while len(held) > 50:
                    held.pop(0).close()
                time.sleep(max(0.0, 1.0 / self.rate - (time.monotonic() - began)))
        finally:
            udp.close()
            for s in held:
                s.close()


def run(port: int, seconds: float = 10.0, devices: int = 50, rate: float = 5.0,
        attack: bool = True, offset: int = 0) -> dict:
    """
    Honest devices for C{seconds} against the gateway on 127.0.0.1:C{port},
    with (C{attack}) or without the poison attacker sending every poison frame
    C{rate} times a second. Blocks; returns C{acks}, C{acks_per_s}, C{p50_ms},
    C{p99_ms} of the honest devices, and C{poison_sent}.

    @param offset: first device number (IMEIs differ between runs).
    """
    until = time.monotonic() + seconds
    honest = [_Honest(port, offset + i, until) for i in range(devices)]
    attacker = _Attacker(port, rate, until) if attack else None
    for t in honest + ([attacker] if attacker else []):
        t.start()
    for t in honest + ([attacker] if attacker else []):
        t.join(seconds + 30)
    latencies = [x for t in honest for x in t.latencies]
    return {"acks": len(latencies), "acks_per_s": round(len(latencies) / seconds, 1),
            "p50_ms": round(percentile(latencies, 50) * 1000, 1),
            "p99_ms": round(percentile(latencies, 99) * 1000, 1),
            "poison_sent": attacker.sent if attacker else 0}


def _refuse_astra(url):
    """
    The astra poison is a record the database refuses: an operator's rule.
    """
    from gateway.store import engine_for, migrate

    engine = engine_for(url)
    migrate(engine)
    with engine.begin() as c:
        if engine.dialect.name == "postgresql":
            c.exec_driver_sql(
                "CREATE FUNCTION refuse_astra() RETURNS trigger AS $$ BEGIN IF NEW.protocol = 'astra' "
                "THEN RAISE EXCEPTION 'operator rule: no astra records'; END IF; RETURN NEW; END $$ "
                "LANGUAGE plpgsql")
            c.exec_driver_sql("CREATE TRIGGER refuse_astra BEFORE INSERT ON positions "
                              "FOR EACH ROW EXECUTE FUNCTION refuse_astra()")
        else:
            c.exec_driver_sql("CREATE TRIGGER refuse_astra BEFORE INSERT ON positions "
                              "WHEN NEW.protocol = 'astra' BEGIN "
                              "SELECT RAISE(ABORT, 'operator rule: no astra records'); END")
    engine.dispose()


def main(args) -> None:
    workdir = tempfile.mkdtemp(prefix="trackport-poison-")
    dropped = None
    if args.db == "postgresql":
        url, dropped = pg_database(args.pg)
    else:
        url = f"sqlite:///{workdir}/poison.db"
    _refuse_astra(url)
    server = Server(f"trackport-{args.db}", url, workdir)
    results = {False: [], True: []}
    try:
        # Rounds alternate, so a machine whose load changes weighs on both alike.
        for round_ in range(args.rounds):
            for attack in (False, True):
                offset = (2 * round_ + attack) * 10_000
                results[attack].append(run(server.port, args.seconds, args.devices, args.rate, attack, offset))
                time.sleep(2)
        log = open(server.log.name, errors="replace").read()
    finally:
        server.stop()
        if dropped:
            pg_drop(args.pg, dropped)
    print(f"\n{args.db}, {args.devices} honest devices (closed loop, TCP), {args.rounds} rounds of "
          f"{args.seconds:g} s each way; attacker: {len(POISON)} poison frames x {args.rate:g}/s")
    for attack, label in ((False, "without attack"), (True, "poison frames")):
        rs = results[attack]
        median = {k: sorted(r[k] for r in rs)[len(rs) // 2] for k in ("acks_per_s", "p50_ms", "p99_ms")}
        print(f"  {label:15s} median: honest acks {median['acks_per_s']:8.1f}/s  p50 {median['p50_ms']:7.1f} ms"
              f"  p99 {median['p99_ms']:7.1f} ms   rounds: "
              + "; ".join(f"{r['acks_per_s']:.0f}/s {r['p50_ms']:.0f}/{r['p99_ms']:.0f} ms" for r in rs)
              + (f"   poison frames sent {sum(r['poison_sent'] for r in rs)}" if attack else ""))
    print(f"  gateway log: {log.count('not a device id')} 'not a device id' lines, "
          f"{log.count('refused by the database')} 'refused by the database' lines")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    ap.add_argument("--pg", default=os.environ.get("TRACKPORT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3, help="alternations without/with the attack")
    main(ap.parse_args())
