"""
What the PostgreSQL backend spends to store a record, for several ways of
writing the same batches: each variant has a database of its own (the current
schema, altered as the variant says) and one connection; the same batches of
GoSafe records (200 devices, new fingerprints) are replayed on each in turn,
a block of transactions at a time (A, B, C, A, B, C...), and the backend's CPU
time is read from C{/proc/<pid>/schedstat} (nanoseconds) around each block.

Every transaction takes the id-order lock and commits with
C{synchronous_commit} on, as the gateway's writer does.

With C{--writer}, the gateway's own writer is measured instead: a
L{gateway.store.Store} (the guarded engine the gateway makes) is given
C{--batch} frames of one record each (of 200 devices, which also note they
spoke) and writes them as its writer thread does (C{Store._write_all}); the
CPU time of the thread that writes (C{time.thread_time}) and of the backend
are read around each block. C{--baseline SRC} adds the writer of another
checkout (the code before a change), each in a process of its own on a
database of its own, blocks alternating.

Usage: .venv/bin/python bench/pgwrite.py [--batch 30] [--blocks 20]
       [--block 50] [--variants before,copy-json,...] [--pg postgresql://...]
       .venv/bin/python bench/pgwrite.py --writer [--baseline SRC] [--batch 1] ...
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
#: The checkout whose gateway is measured (C{--writer}: set for a baseline's process).
SOURCE = os.environ.get("PGWRITE_SOURCE") or os.path.dirname(HERE)
sys.path.insert(0, SOURCE)

import psycopg2  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from gateway import store  # noqa: E402
from gateway.model import Position  # noqa: E402
from gateway.ordering import ID_ORDER_LOCK  # noqa: E402

COLUMNS = store._COLUMN_LIST
LOCK = f"SELECT pg_advisory_xact_lock({ID_ORDER_LOCK})"
STAGE = ("CREATE TEMPORARY TABLE IF NOT EXISTS positions_stage ON COMMIT DELETE ROWS AS "
         f"SELECT {COLUMNS} FROM positions WITH NO DATA")
MERGE = (f"INSERT INTO positions ({COLUMNS}) SELECT {COLUMNS} FROM positions_stage "
         "ON CONFLICT (device_id, fingerprint) DO NOTHING")
#: The record's JSON columns as they were before migration 0006.
JSONB = ["ALTER TABLE positions ALTER COLUMN attributes TYPE jsonb USING attributes::jsonb, "
         "ALTER COLUMN alarm TYPE jsonb USING alarm::jsonb"]
NO_TIME_INDEX = ["DROP INDEX ix_positions_device_time"]
COLLATE_C = ["ALTER TABLE positions ALTER COLUMN device_id TYPE varchar(64) COLLATE \"C\", "
             "ALTER COLUMN fingerprint TYPE varchar(32) COLLATE \"C\""]


def stage_each(cursor, text):
    # What gateway/store.py did: the lock twice (the batch's and the
    # insert's), the staging table looked up in every transaction.
    cursor.execute(LOCK)
    cursor.execute(LOCK)
    cursor.execute(STAGE)
    cursor.copy_expert(f"COPY positions_stage ({COLUMNS}) FROM STDIN", io.StringIO(text))
    cursor.execute(MERGE)


def stage_once(cursor, text):
    cursor.execute(LOCK)
    cursor.copy_expert(f"COPY positions_stage ({COLUMNS}) FROM STDIN", io.StringIO(text))
    cursor.execute(f"{LOCK}; {MERGE}")


def direct(cursor, text):
    # What gateway/store.py does (a batch that holds a stored record would
    # fall back to the staging table's merge).
    cursor.execute(LOCK)
    cursor.execute(f"{LOCK}; SAVEPOINT trackport_copy")
    cursor.copy_expert(f"COPY positions ({COLUMNS}) FROM STDIN", io.StringIO(text))


def direct_bare(cursor, text):
    # Not safe (a stored record would abort the transaction): prices the
    # savepoint.
    cursor.execute(LOCK)
    cursor.copy_expert(f"COPY positions ({COLUMNS}) FROM STDIN", io.StringIO(text))


def direct_one_lock(cursor, text):
    # The batch's own lock left out: what a transaction that writes no
    # device row before its records could spare.
    cursor.execute(f"{LOCK}; SAVEPOINT trackport_copy")
    cursor.copy_expert(f"COPY positions ({COLUMNS}) FROM STDIN", io.StringIO(text))


#: name: (DDL after the migrations, create the staging table once, writer)
VARIANTS = {
    "before": (JSONB, False, stage_each),
    "stage-once": (JSONB, True, stage_once),
    "copy": (JSONB, False, direct),
    "copy-json": ([], False, direct),
    "copy-json-no-time-index": (NO_TIME_INDEX, False, direct),
    "copy-json-collate-c": (COLLATE_C, False, direct),
    "copy-json-no-savepoint": ([], False, direct_bare),
    "copy-json-one-lock": ([], False, direct_one_lock),
}


def cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as fh:
        return int(fh.read().split()[0])


def records(count: int):
    """
    C{count} GoSafe records (the bench traffic's frame, decoded), their times
    one second apart.
    """
    from bench.traffic import gosafe
    from gateway.decode import decode

    decoded = decode([gosafe.make(1).frame("356000000000001", 0)])["records"][0]
    base = datetime(2025, 1, 1, tzinfo=timezone.utc)
    fields = {k: v for k, v in decoded.items() if k != "time"}
    return [Position(time=base + timedelta(seconds=i), **fields) for i in range(count)]


def batches(count: int, size: int, devices: int = 200):
    """
    C{count} batches of C{size} rows as COPY text: records of C{devices}
    devices in turn, every one new.
    """
    pool = records(count * size // devices + 2)
    received = datetime.now(timezone.utc)
    out, n = [], 0
    for _ in range(count):
        rows = []
        for _ in range(size):
            device = f"35600000{n % devices:07d}"
            rows.append(store.position_row(device, "gosafe", pool[n // devices], received))
            n += 1
        out.append("".join(map(store._copy_line, rows)))
    return out


class Target:
    def __init__(self, server, name, variant):
        self.name = name
        self.ddl, self.once, self.write = VARIANTS[variant]
        admin = psycopg2.connect(server)
        admin.autocommit = True
        self.database = f"pgwrite_{name.replace('-', '_')}"
        with admin.cursor() as c:
            c.execute(f"DROP DATABASE IF EXISTS {self.database}")
            c.execute(f"CREATE DATABASE {self.database}")
        admin.close()
        url = make_url(server).set(database=self.database)
        engine = store.engine_for(url.render_as_string(hide_password=False))
        store.migrate(engine)
        engine.dispose()
        self.connection = psycopg2.connect(url.set(drivername="postgresql").render_as_string(
            hide_password=False))
        with self.connection.cursor() as c:
            for ddl in self.ddl:
                c.execute(ddl)
            if self.once:
                c.execute(STAGE)
        self.connection.commit()
        self.pid = self.connection.get_backend_pid()
        self.samples = []

    def block(self, texts, per_batch):
        before = cpu_ns(self.pid)
        with self.connection.cursor() as cursor:
            for text in texts:
                self.write(cursor, text)
                self.connection.commit()
        self.samples.append((cpu_ns(self.pid) - before) / 1000 / (len(texts) * per_batch))

    def close(self, server):
        with self.connection.cursor() as c:
            c.execute("SELECT count(*), pg_total_relation_size('positions'), "
                      "pg_relation_size('positions') FROM positions")
            self.rows, self.total_bytes, self.heap_bytes = c.fetchone()
        self.connection.close()
        drop_database(server, self.database)


def drop_database(server, name):
    admin = psycopg2.connect(server)
    admin.autocommit = True
    with admin.cursor() as c:
        c.execute(f"DROP DATABASE {name}")
    admin.close()


def create_database(server, name):
    admin = psycopg2.connect(server)
    admin.autocommit = True
    with admin.cursor() as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    admin.close()


def writer_process(server, name, batch):
    """
    In a process of its own (C{--writer-process}): a Store of L{SOURCE} on
    database C{name}; for each line C{block N} read, N batches written, and
    the writing thread's and the backend's CPU µs per record printed.
    """
    class Reactor:
        def callFromThread(self, fn, *args, **kwargs):
            pass  # the callbacks of the acks: the reactor thread's work, not the writer's

    create_database(server, name)
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    engine = store.engine_for(url, statement_timeout=store.STATEMENT_TIMEOUT)
    store.migrate(engine)
    writer = store.Store(engine, Reactor())
    pool = records(20000)
    received = datetime.now(timezone.utc)
    for n in range(200):  # every device's row written, as in a gateway that runs already
        writer.submit(f"35600000{n:07d}", "gosafe", "127.0.0.1:5000", [pool[0]], received, b"frame",
                      "tcp", done=lambda error: None)
    writer._write_all(writer._take())
    pid = writer._connection().connection.driver_connection.get_backend_pid()
    n = 200
    for line in sys.stdin:
        if not line.startswith("block "):
            break
        gateway = backend = 0
        count = int(line.split()[1])
        for _ in range(count):
            for _ in range(batch):
                device = f"35600000{n % 200:07d}"
                writer.touch(device, "gosafe", "tcp", "127.0.0.1:5000")
                writer.submit(device, "gosafe", "127.0.0.1:5000", [pool[n // 200]], received,
                              b"frame", "tcp", done=lambda error: None)
                n += 1
            work = writer._take()
            before, before_backend = time.thread_time_ns(), cpu_ns(pid)
            writer._write_all(work)
            gateway += time.thread_time_ns() - before
            backend += cpu_ns(pid) - before_backend
        print(gateway / 1000 / (count * batch), backend / 1000 / (count * batch), flush=True)
    writer._drop_connection()
    engine.dispose()
    drop_database(server, name)


def writers(server, args):
    """
    C{--writer}: this checkout's Store and C{--baseline}'s, blocks alternating.
    """
    sides = [("this checkout", os.path.dirname(HERE))] + ([("baseline", args.baseline)] if args.baseline else [])
    processes, samples = [], {}
    for i, (label, source) in enumerate(sides):
        env = dict(os.environ, PGWRITE_SOURCE=os.path.abspath(source))
        processes.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--writer-process", f"pgwrite_writer_{i}",
             "--batch", str(args.batch), "--pg", server], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True))
        samples[label] = []
    try:
        for b in range(args.blocks + 1):  # the first block warms caches
            order = list(zip(sides, processes))
            for (label, _), process in (order if b % 2 == 0 else reversed(order)):
                process.stdin.write(f"block {args.block}\n")
                process.stdin.flush()
                gateway, backend = map(float, process.stdout.readline().split())
                if b:
                    samples[label].append((gateway, backend))
    finally:
        for process in processes:
            process.stdin.write("end\n")
            process.stdin.flush()
            process.wait()
    print(f"{args.batch} one-record frames a transaction, {args.blocks} blocks of {args.block} "
          f"transactions, load average {os.getloadavg()[0]:.1f}")
    print("| writer | writing thread CPU µs/record, median (min–max) | backend CPU µs/record |")
    print("|---|---|---|")
    for label, _ in sides:
        g = [x for x, _ in samples[label]]
        k = [y for _, y in samples[label]]
        print(f"| {label} | {statistics.median(g):.1f} ({min(g):.1f}–{max(g):.1f}) | "
              f"{statistics.median(k):.1f} ({min(k):.1f}–{max(k):.1f}) |")
    if args.baseline:
        # Blocks run back to back share the machine's load: their differences
        # vary less than either side's figures.
        for column, name in ((0, "writing thread"), (1, "backend")):
            d = [a[column] - b[column] for a, b in zip(samples["this checkout"], samples["baseline"])]
            print(f"{name}, this checkout − baseline, block by block: median {statistics.median(d):+.1f} "
                  f"µs/record ({min(d):+.1f} to {max(d):+.1f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--pg", default=os.environ.get("TRACKPORT_TEST_PG",
                                                        "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--batch", type=int, default=30, help="records a transaction")
    parser.add_argument("--block", type=int, default=50, help="transactions a measurement")
    parser.add_argument("--blocks", type=int, default=20, help="measurements a variant")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--writer", action="store_true", help="measure the gateway's writer (Store)")
    parser.add_argument("--baseline", metavar="SRC", help="with --writer: also another checkout's")
    parser.add_argument("--writer-process", metavar="DATABASE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    server = make_url(args.pg).set(drivername="postgresql").render_as_string(hide_password=False)
    if args.writer_process:
        return writer_process(server, args.writer_process, args.batch)
    if args.writer:
        return writers(server, args)
    names = args.variants.split(",")
    texts = batches(args.block * args.blocks, args.batch)
    targets = [Target(server, name, name) for name in names]
    try:
        for b in range(args.blocks):
            chunk = texts[b * args.block:(b + 1) * args.block]
            for target in (targets if b % 2 == 0 else reversed(targets)):
                target.block(chunk, args.batch)
    finally:
        for target in targets:
            target.close(server)
    print(f"{args.batch} records a transaction, {args.blocks} blocks of {args.block} transactions, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| variant | backend CPU µs/record, median (min–max) | table + indexes bytes/record | heap bytes/record |")
    print("|---|---|---|---|")
    for t in targets:
        s = t.samples[1:]  # the first block warms caches
        print(f"| {t.name} | {statistics.median(s):.1f} ({min(s):.1f}–{max(s):.1f}) | "
              f"{t.total_bytes / t.rows:.0f} | {t.heap_bytes / t.rows:.0f} |")


if __name__ == "__main__":
    main()
