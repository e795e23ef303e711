"""
Change polling that cannot miss a commit (issue 11, "found by review"): ids and
settings versions drawn under L{gateway.ordering.serialize_ids} commit in the
order they were drawn, and the command poll reads state, not a cursor — with
concurrent writers on PostgreSQL.
"""

import threading
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from twisted.internet.task import Clock

from gateway import schema
from gateway.commands import CommandQueue, enqueue
from gateway.store import engine_for, merge_settings, migrate, settings_after


def _engine(url):
    engine = engine_for(url)
    migrate(engine)
    return engine


def test_a_settings_version_drawn_first_commits_first(pg_url):
    engine = _engine(pg_url)
    first = engine.connect()
    transaction = first.begin()
    merge_settings(first, "postgresql", "devA", {"gotop.password": "111111"})
    done = threading.Event()

    def second():
        with engine.begin() as c:
            merge_settings(c, "postgresql", "devB", {"gotop.password": "222222"})
        done.set()

    thread = threading.Thread(target=second)
    thread.start()
    # The second writer waits for the first: it cannot commit a later version
    # while an earlier one is still open.
    assert not done.wait(1.0)
    with engine.connect() as c:
        assert settings_after(c, 0) == ({}, 0)
    transaction.commit()
    first.close()
    thread.join(10)
    assert done.is_set()
    with engine.connect() as c:
        changed, last = settings_after(c, 0)
        assert list(changed) == ["devA", "devB"]
        seen_a = c.execute(select(schema.devices.c.settings_seq)
                           .where(schema.devices.c.id == "devA")).scalar_one()
        changed, _ = settings_after(c, seen_a)
        assert list(changed) == ["devB"] and last == seen_a + 1
    engine.dispose()


class _Hub:
    def __init__(self):
        self.clock = Clock()
        self.sessions = {}


def test_a_command_committing_after_a_later_one_is_still_picked_up(pg_url):
    engine = _engine(pg_url)
    queue = CommandQueue(_Hub(), engine, reactor=None)
    now = datetime.now(timezone.utc)
    late = engine.connect()
    transaction = late.begin()
    late.execute(schema.commands.insert().values(
        device_id="slow", type="engine_stop", params={}, status="queued", created_at=now,
        expires_at=now + timedelta(seconds=600)))
    fast = enqueue(engine, "fast", "engine_stop", {})
    slow_id = late.execute(select(schema.commands.c.id)
                           .where(schema.commands.c.device_id == "slow")).scalar_one()
    assert slow_id < fast
    assert queue._pending_devices() == {"fast"}
    transaction.commit()
    late.close()
    # The smaller id committed last: a high-water mark would have moved past it.
    assert queue._pending_devices() == {"fast", "slow"}
    engine.dispose()
