"""
What the PostgreSQL backend spends to store a record, for several ways of
writing the same batches: each variant has a database of its own (the current
schema, altered as the variant says) and one connection; the same batches of
GoSafe records (200 devices, new fingerprints) are replayed on each in turn,
a block of transactions at a time (A, B, C, A, B, C...), and the backend's CPU
time is read from C{/proc/<pid>/schedstat} (nanoseconds) around each block.

Every transaction takes the id-order lock and commits with
C{synchronous_commit} on, as the gateway's writer does.

Usage: .venv/bin/python bench/pgwrite.py [--batch 30] [--blocks 20]
       [--block 50] [--variants before,copy-json,...] [--pg postgresql://...]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
from datetime import datetime, timedelta, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

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
        admin = psycopg2.connect(server)
        admin.autocommit = True
        with admin.cursor() as c:
            c.execute(f"DROP DATABASE {self.database}")
        admin.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--pg", default=os.environ.get("TRACKPORT_TEST_PG",
                                                        "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--batch", type=int, default=30, help="records a transaction")
    parser.add_argument("--block", type=int, default=50, help="transactions a measurement")
    parser.add_argument("--blocks", type=int, default=20, help="measurements a variant")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    server = make_url(args.pg).set(drivername="postgresql").render_as_string(hide_password=False)
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
