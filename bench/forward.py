"""
Forwarding benchmark: a real trackport process with one sink (webhook, MQTT
via Mosquitto, AMQP via RabbitMQ, all on 127.0.0.1) while devices send, and:

- throughput: simulated devices send as fast as their acks allow (closed
  loop, toy frames of 3 records) for --seconds; prints durable ingest
  records/s, records/s that reached the target over the same window, and how
  long the backlog took to drain after ingest stopped;
- backlog: then C{forward replay --from-id 1} and the records/s at which the
  whole backlog is delivered again with no ingest beside it (the sink's own
  ceiling);
- lag: a steady --rate of records/s for --seconds; prints p50/p99 of the time
  from the record's server_time (received, just before its group commit) to
  its arrival at the target (the target confirms right after).

Targets count unique record ids; the harness (receivers, JSON parsing) runs on
the same 2 cores as the gateway and the brokers.

Usage: .venv/bin/python bench/forward.py [--db sqlite,postgresql] [--sinks webhook,mqtt,amqp]
       [--seconds 10] [--devices 20] [--rate 600] [--pg postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, ROOT)

from tests.forwardkit import AMQP, MqttCollector, Receiver, Received  # noqa: E402

RECORDS_PER_FRAME = 3


class AmqpConsumer:
    """
    Consumes a queue bound to the sink's exchange on a thread of its own.
    """

    def __init__(self, exchange):
        import pika

        self.received = Received()
        self.exchange = exchange
        connection = pika.BlockingConnection(pika.ConnectionParameters(*AMQP, heartbeat=0))
        channel = connection.channel()
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        channel.queue_declare(exchange + ".q")
        channel.queue_bind(exchange + ".q", exchange, routing_key="#")
        channel.basic_consume(exchange + ".q", self._message, auto_ack=True)
        self.connection, self.channel = connection, channel
        self.thread = threading.Thread(target=channel.start_consuming, daemon=True)
        self.thread.start()

    def _message(self, channel, method, properties, body):
        self.received.add(properties.type, json.loads(body))

    def close(self):
        def stop():
            self.channel.stop_consuming()
            self.channel.queue_delete(self.exchange + ".q")
            self.channel.exchange_delete(self.exchange)
        self.connection.add_callback_threadsafe(stop)
        self.thread.join(10)
        self.connection.close()


def target(kind):
    uid = uuid.uuid4().hex[:8]
    if kind == "webhook":
        r = Receiver(b"bench")
        return r.url, lambda: r.received, r.stop
    if kind == "mqtt":
        c = MqttCollector(f"bench{uid}")
        return f"mqtt://127.0.0.1:1883/bench{uid}/{{device_id}}", lambda: c.received, c.close
    c = AmqpConsumer(f"bench{uid}")
    return f"amqp://guest:guest@127.0.0.1:5672/bench{uid}?routing_key={{device_id}}", lambda: c.received, c.close


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(db, url, workdir):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests", "plugins")]))
    log = open(os.path.join(workdir, f"gw-{port}.log"), "wb")
    proc = subprocess.Popen([os.path.join(BIN, "twistd"), "-n", "--pidfile=", "trackport", "--port", str(port),
                             "--interface", "127.0.0.1", "--db", db, "--forward", f"bench={url}"],
                            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        with open(log.name, "rb") as fh:
            if b"forward bench: delivering to" in fh.read():
                return proc, port
        time.sleep(0.1)
    raise RuntimeError("gateway did not start")


def device(port, device_id, stop, counter, interval=0.0):
    s = socket.create_connection(("127.0.0.1", port))
    ack = f"ACK,{device_id}\n".encode()
    n = 0
    next_at = time.monotonic()
    while not stop.is_set():
        n += 1
        s.sendall(f"TOY,{device_id},{RECORDS_PER_FRAME},{n}\n".encode())
        got = b""
        while len(got) < len(ack):
            chunk = s.recv(64)
            if not chunk:
                return
            got += chunk
        counter[device_id] = n * RECORDS_PER_FRAME
        if interval:
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    s.close()


def unique(received):
    return len({o["id"] for o in received().of_kind("position")})


def load(port, devices, seconds, interval=0.0):
    stop, counter = threading.Event(), {}
    prefix = uuid.uuid4().hex[:6]
    threads = [threading.Thread(target=device, args=(port, f"b{prefix}{i}", stop, counter, interval),
                                daemon=True) for i in range(devices)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    return sum(counter.values())


def throughput(db, kind, args, workdir):
    url, received, close = target(kind)
    proc, port = start_gateway(db, url, workdir)
    try:
        started = time.monotonic()
        ingested = load(port, args.devices, args.seconds)
        window = time.monotonic() - started
        at_end = unique(received)
        deadline = time.monotonic() + 300
        while unique(received) < ingested and time.monotonic() < deadline:
            time.sleep(0.05)
        drain = time.monotonic() - started - window
        if unique(received) < ingested:
            print(f"  {kind}: the test target got {unique(received)} of {ingested} records", flush=True)
        delivered = unique(received)
        # Timed by the sink's cursor, which moves on the broker's confirmation:
        # a test subscriber slower than the broker would be dropped messages
        # (Mosquitto's queue limit) and count too few.
        from gateway.store import engine_for

        engine = engine_for(db)
        with engine.connect() as c:
            last = c.exec_driver_sql("SELECT max(id) FROM positions").scalar()
        replayed = time.monotonic()
        subprocess.run([os.path.join(BIN, "trackport"), "forward", "replay", "bench", "--from-id", "1",
                        "--db", db], check=True, capture_output=True)
        while time.monotonic() < replayed + 300:
            with engine.connect() as c:
                cursor = c.exec_driver_sql("SELECT position_id FROM forward_sinks").scalar()
            if cursor >= last:
                break
            time.sleep(0.05)
        replay_rps = ingested / (time.monotonic() - replayed)
        engine.dispose()
        return {"ingest_rps": ingested / window, "forward_rps": at_end / window, "drain_s": drain,
                "delivered": delivered, "ingested": ingested, "replay_rps": replay_rps}
    finally:
        proc.terminate()
        proc.wait(30)
        close()


def lag(db, kind, args, workdir):
    url, received, close = target(kind)
    proc, port = start_gateway(db, url, workdir)
    try:
        frames_per_s = args.rate / RECORDS_PER_FRAME
        ingested = load(port, args.devices, args.seconds, interval=args.devices / frames_per_s)
        deadline = time.monotonic() + 120
        while unique(received) < ingested and time.monotonic() < deadline:
            time.sleep(0.05)
        lags, seen = [], set()
        got = received()
        with got.lock:
            items = list(got.items)
        for arrived, k, obj in items:
            if k == "position" and obj["id"] not in seen:
                seen.add(obj["id"])
                stored = datetime.fromisoformat(obj["server_time"].replace("Z", "+00:00")).timestamp()
                lags.append(arrived - stored)
        lags.sort()
        pick = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))] * 1000  # noqa: E731
        return {"rate": ingested / args.seconds, "p50_ms": pick(0.50), "p99_ms": pick(0.99),
                "n": len(lags)}
    finally:
        proc.terminate()
        proc.wait(30)
        close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--sinks", default="webhook,mqtt,amqp")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--rate", type=float, default=600.0, help="records/s for the lag measurement")
    parser.add_argument("--pg", default=os.environ.get("TRACKPORT_TEST_PG",
                                                       "postgresql://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    from gateway.store import engine_for

    for db_kind in args.db.split(","):
        for kind in args.sinks.split(","):
            with tempfile.TemporaryDirectory() as workdir:
                results = []
                for measure in (throughput, lag):
                    if db_kind == "sqlite":
                        db = f"sqlite:///{workdir}/bench-{measure.__name__}.db"
                    else:
                        name = "bench_" + uuid.uuid4().hex[:10]
                        admin = engine_for(args.pg, isolation_level="AUTOCOMMIT")
                        with admin.connect() as c:
                            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
                        db = args.pg.rsplit("/", 1)[0] + "/" + name
                    try:
                        results.append(measure(db, kind, args, workdir))
                    finally:
                        if db_kind != "sqlite":
                            with admin.connect() as c:
                                c.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                                  "WHERE datname = %s", (name,))
                                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
                            admin.dispose()
                t, lg = results
                print(f"{db_kind:10} {kind:8} ingest {t['ingest_rps']:7.0f} rec/s  forwarded "
                      f"{t['forward_rps']:7.0f} rec/s  backlog drained in {t['drain_s']:5.1f}s "
                      f"({t['delivered']}/{t['ingested']})  backlog {t['replay_rps']:6.0f} rec/s  |  at {lg['rate']:.0f} rec/s: lag p50 "
                      f"{lg['p50_ms']:.0f} ms p99 {lg['p99_ms']:.0f} ms ({lg['n']} records)", flush=True)


if __name__ == "__main__":
    main()
