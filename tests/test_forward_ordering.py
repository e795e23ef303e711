"""
Ids commit in the order they were drawn (L{gateway.ordering}): on PostgreSQL a
reader that moves a cursor (C{id > last}) past what it saw never skips a row
that commits late, even with several writers at once.
"""

import threading
import time
from datetime import datetime, timezone

from sqlalchemy import func, select

from gateway import schema
from gateway.model import Position
from gateway.ordering import serialize_ids
from gateway.store import Store, engine_for, migrate
from tests.test_store import ThreadReactor, wait_for


def row(n):
    return {"device_id": "d", "protocol": "toy", "time": None,
            "server_time": datetime.now(timezone.utc), "valid": False, "alarm": [],
            "attributes": {}, "fingerprint": f"f{n}"}


def test_a_second_writer_draws_its_ids_after_the_first_commits(pg_url):
    engine = engine_for(pg_url)
    migrate(engine)
    first = engine.connect()
    transaction = first.begin()
    serialize_ids(first)
    early = first.execute(schema.positions.insert().values(row(1)).returning(schema.positions.c.id)).scalar()
    late = []

    def second():
        with engine.begin() as connection:
            serialize_ids(connection)
            late.append(connection.execute(
                schema.positions.insert().values(row(2)).returning(schema.positions.c.id)).scalar())

    thread = threading.Thread(target=second)
    thread.start()
    thread.join(1.0)
    # The second writer waits: it has drawn no id yet, and nothing is visible.
    assert thread.is_alive() and not late
    with engine.connect() as reader:
        assert reader.execute(select(func.count()).select_from(schema.positions)).scalar() == 0
    transaction.commit()
    first.close()
    thread.join(10)
    assert late and late[0] > early
    engine.dispose()


def test_a_cursor_reader_never_skips_with_concurrent_writers(pg_url):
    """
    Two stores (two engines, as two gateway processes would have) write at
    once while a reader pages through C{id > cursor}; it sees every row.
    """
    engines = [engine_for(pg_url) for _ in range(2)]
    migrate(engines[0])
    stores = [Store(e, ThreadReactor(), max_batch=7) for e in engines]
    for s in stores:
        s.start()
    seen, done = [], threading.Event()

    def read():
        cursor = 0
        with engine_for(pg_url).connect() as reader:
            while True:
                finished = done.is_set()
                ids = reader.execute(select(schema.positions.c.id).where(schema.positions.c.id > cursor)
                                     .order_by(schema.positions.c.id).limit(50)).scalars().all()
                reader.rollback()
                seen.extend(ids)
                if ids:
                    cursor = ids[-1]
                elif finished:
                    return
                else:
                    time.sleep(0.001)

    def write(store, name):
        ds = []
        for i in range(600):
            record = Position(time=datetime(2024, 1, 1, tzinfo=timezone.utc), valid=True,
                              attributes={"n": i})
            ds.append(store.submit(name, "toy", "peer", [record]))
            if i % 25 == 0:
                time.sleep(0.002)
        for d in ds:
            wait_for(d)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(s, f"dev{i}")) for i, s in enumerate(stores)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
    done.set()
    reader.join(60)
    for s in stores:
        wait_for(s.stop())
    with engines[0].connect() as c:
        stored = c.execute(select(schema.positions.c.id).order_by(schema.positions.c.id)).scalars().all()
    assert len(stored) == 1200
    assert seen == stored
