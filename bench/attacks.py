"""
Hostile-traffic benchmark: honest devices' ack latency with no attack, then
under each attack, each against a fresh real gateway process (C{twistd -n
trackport}, open-file limit 1024 as on a stock Linux service):

- history flush: one TCP device sends 600,000 records of history (real GoSafe
  frames, as C{bench/ingest.py}) as fast as TCP lets it, not waiting for acks;
- garbage flood: one TCP connection sends one valid frame, then 0.5 MB/s of
  garbage (and reconnects whenever the gateway closes it);
- idle flood: connections that never send a byte, opened up to past the
  gateway's open-file limit and reopened as they are closed;
- poison frames: C{bench/poison.py}'s C{run()} when that file is present
  (its own honest devices, closed loop; skipped when it is absent).

Honest devices: N TCP devices each sending one 3-record frame a second and
waiting for its ack (p50/p99 of send-to-ack; a frame not acked within the
window counts as missing). Also printed: the gateway's log growth.

Usage: .venv/bin/python bench/attacks.py [--db postgresql|sqlite] [--seconds 15]
       [--devices 100] [--only flush,garbage,idle,poison] [--code DIR]

C{--code DIR} runs the gateway from another checkout (e.g. the code before a
change) with the same load, for before/after figures.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

from ingest import ACK, frame, free_port, imei, percentile, pg_database, pg_drop  # noqa: E402

#: The gateway's open-file limit in every scenario.
GATEWAY_NOFILE = 1024
FLUSH_RECORDS = 600_000


class Gateway:
    def __init__(self, db: str, workdir: str, code: str):
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"gateway-{self.port}.log")
        self.log = open(self.log_path, "wb")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")

        def limit():
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (GATEWAY_NOFILE, hard))

        self.proc = subprocess.Popen(
            [twistd, "-n", "--pidfile=", "trackport", "--port", str(self.port),
             "--interface", "127.0.0.1", "--db", db],
            cwd=workdir, env=dict(os.environ, PYTHONPATH=code), stdout=self.log,
            stderr=subprocess.STDOUT, preexec_fn=limit)
        deadline = time.time() + 60
        while "trackport ready on" not in open(self.log_path, errors="replace").read():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(open(self.log_path, errors="replace").read()[-2000:])
            time.sleep(0.05)

    def log_size(self) -> int:
        return os.path.getsize(self.log_path)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _connect(port, timeout=5.0):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


class Honest(threading.Thread):
    """
    A device reporting once a second: send a frame, wait for its ack.
    """

    def __init__(self, port, index, until):
        super().__init__(daemon=True)
        self.port, self.index, self.until = port, index, until
        self.latencies, self.missing = [], 0

    def run(self):
        try:
            sock = _connect(self.port)
        except OSError:
            self.missing += 1
            return
        n, buffer, tick = 0, b"", time.monotonic()
        sock.settimeout(0.1)
        with sock:
            while tick < self.until:
                sent = time.monotonic()
                try:
                    sock.sendall(frame(imei(self.index), n))
                except OSError:
                    self.missing += 1
                    return
                n += 1
                while len(buffer) < len(ACK) and time.monotonic() < self.until + 5:
                    try:
                        data = sock.recv(4096)
                    except socket.timeout:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        self.missing += 1
                        return
                    buffer += data
                if len(buffer) < len(ACK):
                    self.missing += 1
                    return
                buffer = buffer[len(ACK):]
                self.latencies.append(time.monotonic() - sent)
                tick += 1.0
                time.sleep(max(0.0, tick - time.monotonic()))


def honest_run(port, devices, seconds, offset):
    until = time.monotonic() + seconds
    threads = [Honest(port, offset + i, until) for i in range(devices)]
    for i, t in enumerate(threads):
        t.start()
        time.sleep(1.0 / devices)  # spread the reports over the second
    for t in threads:
        t.join(seconds + 30)
    latencies = [x for t in threads for x in t.latencies]
    return {"acks": len(latencies), "expected": int(devices * seconds),
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000}


# -- attacks: each runs until C{stop} is set, and reports what it did --------

def history_flush(port, stop, report):
    sock = _connect(port, timeout=None)
    acked = [0]

    def read_acks():
        buffer = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            acked[0] += len(buffer) // len(ACK) * 3
            buffer = buffer[len(buffer) // len(ACK) * len(ACK):]

    threading.Thread(target=read_acks, daemon=True).start()
    sent = 0
    sock.settimeout(0.5)
    pending = b""
    try:
        while not stop.is_set() and sent < FLUSH_RECORDS:
            if not pending:
                pending = b"".join(frame(imei(999_999), sent // 3 + i) for i in range(100))
                sent += 300
            try:
                n = sock.send(pending)
                pending = pending[n:]
            except socket.timeout:
                continue
    except OSError:
        pass
    report.update(sent_records=sent, acked_records=acked[0])
    sock.close()


def garbage_flood(port, stop, report, rate=500_000):
    closed, garbage = 0, os.urandom(rate // 20)
    sent = 0
    while not stop.is_set():
        try:
            sock = _connect(port)
            sock.sendall(frame(imei(999_998), closed))
            began = time.monotonic()
            while not stop.is_set():
                sock.sendall(garbage)
                sent += len(garbage)
                # 0.5 MB/s in twenty pieces a second.
                time.sleep(max(0.0, began + sent / rate - time.monotonic()))
        except OSError:
            closed += 1
            time.sleep(0.05)
    report.update(garbage_mb=round(sent / 1e6, 1), closed_by_gateway=closed)


def idle_flood(port, stop, report, count=GATEWAY_NOFILE + 200):
    held, opened = selectors.DefaultSelector(), 0
    while not stop.is_set():
        while len(held.get_map()) < count and not stop.is_set():
            try:
                held.register(_connect(port, timeout=1.0), selectors.EVENT_READ)
                opened += 1
            except OSError:
                break
        # Connections the gateway closed read as end of file: reopen them.
        for key, _ in held.select(0.2):
            held.unregister(key.fileobj)
            key.fileobj.close()
    report.update(idle_opened=opened, idle_held_at_end=len(held.get_map()))
    for key in list(held.get_map().values()):
        key.fileobj.close()
    held.close()


ATTACKS = {"flush": ("history flush", history_flush), "garbage": ("garbage flood", garbage_flood),
           "idle": ("idle flood", idle_flood)}


def scenario(label, attack, db, workdir, args, offset):
    gateway = Gateway(db, workdir, args.code)
    stop, report = threading.Event(), {}
    try:
        log_before = gateway.log_size()
        thread = None
        if attack is not None:
            thread = threading.Thread(target=attack, args=(gateway.port, stop, report), daemon=True)
            thread.start()
            time.sleep(3.0)  # let the attack take hold
        began = time.monotonic()
        result = honest_run(gateway.port, args.devices, args.seconds, offset)
        elapsed = time.monotonic() - began
        stop.set()
        if thread is not None:
            thread.join(30)
        result["log_kb_s"] = (gateway.log_size() - log_before) / 1024 / elapsed
        result.update(report)
    finally:
        stop.set()
        gateway.stop()
    line = (f"{label:16s} honest acks {result['acks']:5d}/{result['expected']:<5d} "
            f"p50 {result['p50_ms']:8.1f} ms  p99 {result['p99_ms']:8.1f} ms  "
            f"log {result['log_kb_s']:8.1f} KB/s  "
            + "  ".join(f"{k}={v}" for k, v in report.items()))
    print(line, flush=True)
    return line


def poison_scenario(db, workdir, args, offset):
    path = os.path.join(HERE, "poison.py")
    if not os.path.exists(path):
        line = "poison frames    skipped: bench/poison.py is not in this checkout"
        print(line, flush=True)
        return [line]
    import poison

    lines = []
    for label, attack in (("poison: none", False), ("poison frames", True)):
        gateway = Gateway(db, workdir, args.code)
        try:
            r = poison.run(gateway.port, args.seconds, devices=args.devices, attack=attack, offset=offset)
        finally:
            gateway.stop()
        lines.append(f"{label:16s} honest acks {r['acks']:5d} (closed loop)  p50 {r['p50_ms']:8.1f} ms  "
                     f"p99 {r['p99_ms']:8.1f} ms  poison_sent={r.get('poison_sent', 0)}")
        print(lines[-1], flush=True)
        offset += args.devices
    return lines


def main(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = tempfile.mkdtemp(prefix="trackport-attacks-")
    wanted = args.only.split(",")
    lines, offset = [], 0
    for label, key in [("no attack", None)] + [(ATTACKS[k][0], k) for k in ATTACKS if k in wanted]:
        if args.db == "postgresql":
            db, name = pg_database(args.pg)
        else:
            db, name = f"sqlite:///{workdir}/{key or 'none'}.db", None
        try:
            lines.append(scenario(label, ATTACKS[key][1] if key else None, db, workdir, args, offset))
        finally:
            if name:
                pg_drop(args.pg, name)
        offset += args.devices
    if "poison" in wanted:
        if args.db == "postgresql":
            db, name = pg_database(args.pg)
        else:
            db, name = f"sqlite:///{workdir}/poison.db", None
        try:
            lines += poison_scenario(db, workdir, args, offset)
        finally:
            if name:
                pg_drop(args.pg, name)
    print(f"\n{args.db}, {args.devices} honest TCP devices reporting once a second, {args.seconds:g} s "
          f"a scenario, gateway open-file limit {GATEWAY_NOFILE}, code {args.code}, "
          f"cpus={os.cpu_count()}")
    for line in lines:
        print(line)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    ap.add_argument("--pg", default=os.environ.get("TRACKPORT_TEST_PG",
                                                   "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--only", default="flush,garbage,idle,poison")
    ap.add_argument("--code", default=ROOT, help="checkout the gateway runs from (default: this one)")
    main(ap.parse_args())
