"""
The store on real databases (SQLite file, PostgreSQL): batched commits, re-sent
records stored once, an outage holding records (no acks) until it ends.
"""

import json
from contextlib import contextmanager
import sqlite3
import threading
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from twisted.internet.defer import DeferredList

from gateway import schema
from gateway.model import Position
from gateway.store import Overloaded, Store, engine_for, merge_settings, load_settings, migrate
from tests.dbproxy import Proxy


class ThreadReactor:
    """
    Runs callFromThread at once, in the writer thread: enough to observe the
    Deferreds without a running reactor.
    """

    def __init__(self):
        self.lock = threading.Lock()

    def callFromThread(self, f, *a, **kw):
        with self.lock:
            f(*a, **kw)


def rec(second, **kw):
    return Position(time=datetime(2024, 5, 1, 12, 0, second, tzinfo=timezone.utc),
                    latitude=52.1, longitude=-0.3, valid=True, **kw)


def wait_for(d, timeout=20):
    result = []
    d.addBoth(result.append)
    deadline = time.time() + timeout
    while not result and time.time() < deadline:
        time.sleep(0.01)
    assert result, "Deferred did not fire"
    return result[0]


def count(engine, table=schema.positions):
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(table)).scalar_one()


@pytest.fixture
def store(db_url):
    engine = engine_for(db_url)
    migrate(engine)
    s = Store(engine, ThreadReactor())
    s.start()
    yield s
    wait_for(s.stop())


def test_stop_fires_once_when_the_writer_ends_before_stop_looks(tmp_path):
    # The writer, told to stop, ends and fires the Deferred (this reactor runs
    # its call at once, in the writer's thread) before stop() checks whether it
    # is still alive: stop() must not fire it a second time.
    engine = engine_for(f"sqlite:///{tmp_path / 'trackport.db'}")
    migrate(engine)
    s = Store(engine, ThreadReactor())
    s.start()

    class WriterEndsFirst:
        def close(self, grace):
            s._thread.join(5)

    engine.trackport_guard = WriterEndsFirst()
    d = s.stop()
    assert not s._thread.is_alive()
    assert wait_for(d) is None


def test_records_commit_and_fire(store):
    d = store.submit("dev1", "toy", "peer", [rec(0), rec(1)])
    assert wait_for(d) is None
    assert count(store.engine) == 2
    with store.engine.connect() as c:
        device = c.execute(select(schema.devices)).mappings().one()
    assert device["id"] == "dev1" and device["protocol"] == "toy"


def test_resent_record_stored_once_same_time_different_record_kept(store):
    wait_for(store.submit("dev1", "toy", "peer", [rec(0), rec(0, speed_kmh=10.0)]))
    # The device did not get our ack and sends the same batch again, plus one.
    wait_for(store.submit("dev1", "toy", "peer", [rec(0), rec(0, speed_kmh=10.0), rec(5)]))
    assert count(store.engine) == 3
    # The same record from another device is its own.
    wait_for(store.submit("dev2", "toy", "peer", [rec(0)]))
    assert count(store.engine) == 4


def test_a_batch_holding_stored_records_stores_each_once(db_url):
    # PostgreSQL COPYs a batch straight into positions; one that holds a
    # record stored already (or the same record twice) is merged instead,
    # also while a refused record is searched for, part by part.
    engine = engine_for(db_url)
    migrate(engine)
    _refuse(engine)
    first = Store(engine, ThreadReactor())
    first.start()
    assert wait_for(first.submit("dev1", "toy", "p", [rec(0), rec(1)])) is None
    wait_for(first.stop())
    for batch, rows, rejected in [
            ([("dev1", [rec(1), rec(2)]), ("dev2", [rec(1)]), ("dev1", [rec(2)]), ("dev3", [rec(3)])], 5, 0),
            ([("dev1", [rec(2), rec(4)]), ("devp", [rec(5, event="refused")]), ("dev2", [rec(1)])], 6, 1),
            ([("dev3", [rec(3)])], 6, 1)]:
        s = Store(engine, ThreadReactor())
        # Queued before the writer runs: one batch.
        ds = [s.submit(device, "toy", "p", records) for device, records in batch]
        s.start()
        try:
            assert [wait_for(d) for d in ds] == [None] * len(ds)
        finally:
            wait_for(s.stop())
        assert (count(engine), count(engine, schema.rejected_records)) == (rows, rejected)
    p = schema.positions.c
    with engine.connect() as c:
        stored = c.execute(select(p.device_id, p.time).order_by(p.id)).all()
    assert [(d, t.second) for d, t in stored] == [
        ("dev1", 0), ("dev1", 1), ("dev1", 2), ("dev2", 1), ("dev3", 3), ("dev1", 4)]


def test_attributes_read_back_as_written(store):
    # Stored as the JSON text the fingerprint covers: sorted keys, -0.0 and
    # 1e300 as they were (JSONB would reorder the keys by length, drop the
    # sign of -0.0 and write 1e300 as a 301-digit integer).
    attributes = {"zz": 1e300, "a": -0.0, "bbb": [1.5, "x"], "cc": {"y": 1, "x": 2}}
    wait_for(store.submit("dev1", "toy", "peer", [rec(0, attributes=attributes, alarm=("sos",))]))
    with store.engine.connect() as c:
        row = c.execute(select(schema.positions)).mappings().one()
    assert list(row["attributes"]) == ["a", "bbb", "cc", "zz"]
    assert list(row["attributes"]["cc"]) == ["x", "y"]
    assert row["attributes"] == attributes and row["alarm"] == ["sos"]
    assert type(row["attributes"]["zz"]) is float and str(row["attributes"]["a"]) == "-0.0"


def _upgrade_to(engine, revision):
    import os

    from alembic import command
    from alembic.config import Config

    import gateway.store

    config = Config()
    config.set_main_option("script_location",
                           os.path.join(os.path.dirname(gateway.store.__file__), "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def test_upgrade_to_json_text_keeps_records(db_url):
    # A database of revision 0005 (JSONB on PostgreSQL) with a record in it.
    engine = engine_for(db_url)
    _upgrade_to(engine, "0005")
    with engine.begin() as c:
        c.exec_driver_sql(
            "INSERT INTO positions (device_id, time, server_time, valid, alarm, attributes, fingerprint) "
            "VALUES ('dev1', NULL, CURRENT_TIMESTAMP, false, '[\"sos\"]', "
            "'{\"b\": [1, 2.5], \"a\": \"x\"}', 'f1')")
    migrate(engine)
    with engine.connect() as c:
        row = c.execute(select(schema.positions)).mappings().one()
        if engine.dialect.name == "postgresql":
            types = dict(c.exec_driver_sql(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'positions' AND column_name IN ('alarm', 'attributes')").all())
            assert types == {"alarm": "json", "attributes": "json"}
    assert row["alarm"] == ["sos"] and row["attributes"] == {"a": "x", "b": [1, 2.5]}
    # Stored after the upgrade, and deduplicated, as before it.
    s = Store(engine, ThreadReactor())
    s.start()
    try:
        for _ in range(2):
            assert wait_for(s.submit("dev1", "toy", "p", [rec(0, attributes={"k": 1})])) is None
    finally:
        wait_for(s.stop())
    assert count(engine) == 2


def test_many_submissions_are_batched(store):
    ds = [store.submit(f"dev{i % 7}", "toy", "peer", [rec(i % 60, speed_kmh=float(i))])
          for i in range(3000)]
    wait_for(DeferredList(ds))
    assert count(store.engine) == 3000
    assert store.committed == 3000


def test_null_time_record_is_kept(store):
    wait_for(store.submit("dev1", "toy", "peer", [Position(time=None, valid=False)]))
    with store.engine.connect() as c:
        row = c.execute(select(schema.positions)).mappings().one()
    assert row["time"] is None and row["server_time"] is not None


def test_overload_refuses_new_frames(db_url):
    engine = engine_for(db_url)
    migrate(engine)
    s = Store(engine, ThreadReactor(), max_pending=2)
    # Not started: nothing drains, so the third record is refused.
    s.submit("d", "toy", "p", [rec(0), rec(1)])
    failure = wait_for(s.submit("d", "toy", "p", [rec(2)]))
    assert failure.check(Overloaded)


def test_sqlite_outage_holds_records_until_it_ends(tmp_path):
    path = tmp_path / "t.db"
    engine = engine_for(f"sqlite:///{path}", busy_timeout=0.05)
    migrate(engine)
    s = Store(engine, ThreadReactor())
    s.retry_delays = (0.05,)
    s.start()
    blocker = sqlite3.connect(str(path), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    fired = []
    s.submit("dev1", "toy", "peer", [rec(0)]).addBoth(fired.append)
    time.sleep(0.6)
    assert fired == [] and not s.healthy and s.pending == 1
    blocker.execute("COMMIT")
    blocker.close()
    deadline = time.time() + 10
    while not fired and time.time() < deadline:
        time.sleep(0.01)
    assert fired == [None]
    assert count(engine) == 1 and s.healthy
    wait_for(s.stop())


@contextmanager
def _store_through_cable(pg_url, **kw):
    """
    A started store whose PostgreSQL connections go through a L{Proxy} (the
    cable a test cuts or black-holes), with short retry delays; stopped, and
    the cable closed, on the way out.
    """
    url = make_url(pg_url)
    cable = Proxy(url.host or "127.0.0.1", url.port or 5432)
    through = url.set(host="127.0.0.1", port=cable.port).render_as_string(hide_password=False)
    engine = engine_for(through, **kw)
    migrate(engine)
    s = Store(engine, ThreadReactor())
    s.retry_delays = (0.05,)
    s.start()
    try:
        yield cable, s
    finally:
        wait_for(s.stop())
        cable.close()
        engine.dispose()


def test_postgresql_outage_holds_records_until_it_ends(pg_url):
    with _store_through_cable(pg_url) as (cable, s):
        assert wait_for(s.submit("dev1", "toy", "peer", [rec(0)])) is None
        cable.refuse()
        fired = []
        s.submit("dev1", "toy", "peer", [rec(1), rec(2)]).addBoth(fired.append)
        time.sleep(1.0)
        assert fired == [] and not s.healthy and s.pending == 2
        cable.forward()
        deadline = time.time() + 20
        while not fired and time.time() < deadline:
            time.sleep(0.01)
        assert fired == [None] and s.healthy
        assert count(engine_for(pg_url)) == 3


def test_postgresql_silence_ends_the_batch_at_the_limit(pg_url):
    # The common batch runs on the driver's connection, outside SQLAlchemy:
    # the guard still ends a call the database leaves unanswered, and the
    # records wait (no ack) until it answers again; then they are written once.
    with _store_through_cable(pg_url, statement_timeout=1.0) as (cable, s):
        assert wait_for(s.submit("dev1", "toy", "peer", [rec(0)])) is None
        cable.blackhole()
        fired = []
        s.submit("dev1", "toy", "peer", [rec(1), rec(2)]).addBoth(fired.append)
        deadline = time.time() + 10
        while s.healthy and time.time() < deadline:
            time.sleep(0.05)
        assert not s.healthy and fired == [] and s.pending == 2
        cable.forward()
        assert wait_for(s.submit("dev1", "toy", "peer", [rec(3)]), timeout=30) is None
        assert fired == [None] and s.healthy
        assert count(engine_for(pg_url)) == 4


def test_settings_merge_and_load(db_url):
    engine = engine_for(db_url)
    migrate(engine)
    with engine.begin() as c:
        merge_settings(c, engine.dialect.name, "dev9", {"toy.password": "1", "toy.x": "2"})
        merge_settings(c, engine.dialect.name, "dev9", {"toy.x": None})
    with engine.connect() as c:
        assert load_settings(c) == {"dev9": {"toy.password": "1"}}


def test_migrate_twice_is_harmless(db_url):
    engine = engine_for(db_url)
    migrate(engine)
    migrate(engine)
    assert count(engine, schema.commands) == 0


def test_schema_revision_is_the_migrations_head():
    import os

    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import gateway.store

    config = Config()
    config.set_main_option("script_location",
                           os.path.join(os.path.dirname(gateway.store.__file__), "migrations"))
    assert ScriptDirectory.from_config(config).get_current_head() == schema.REVISION


def _refuse(engine):
    """
    Operator rules the database enforces and the gateway cannot know: a record
    with event C{refused}, and the device C{refused-id}.
    """
    with engine.begin() as c:
        if engine.dialect.name == "postgresql":
            c.exec_driver_sql(
                "CREATE FUNCTION refuse_record() RETURNS trigger AS $$ BEGIN "
                "IF NEW.event = 'refused' THEN RAISE EXCEPTION 'operator rule: refused event'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql")
            c.exec_driver_sql("CREATE TRIGGER refuse_record BEFORE INSERT ON positions "
                              "FOR EACH ROW EXECUTE FUNCTION refuse_record()")
            c.exec_driver_sql(
                "CREATE FUNCTION refuse_device() RETURNS trigger AS $$ BEGIN "
                "IF NEW.id = 'refused-id' THEN RAISE EXCEPTION 'operator rule: refused device'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql")
            c.exec_driver_sql("CREATE TRIGGER refuse_device BEFORE INSERT OR UPDATE ON devices "
                              "FOR EACH ROW EXECUTE FUNCTION refuse_device()")
        else:
            c.exec_driver_sql("CREATE TRIGGER refuse_record BEFORE INSERT ON positions "
                              "WHEN NEW.event = 'refused' BEGIN "
                              "SELECT RAISE(ABORT, 'operator rule: refused event'); END")
            for op in ("INSERT", "UPDATE"):
                c.exec_driver_sql(f"CREATE TRIGGER refuse_device_{op} BEFORE {op} ON devices "
                                  "WHEN NEW.id = 'refused-id' BEGIN "
                                  "SELECT RAISE(ABORT, 'operator rule: refused device'); END")


def test_refused_rows_are_kept_raw_and_block_no_one(db_url):
    engine = engine_for(db_url)
    migrate(engine)
    _refuse(engine)
    s = Store(engine, ThreadReactor())
    # Everything below is queued before the writer runs: one batch. Records
    # of no device are not deduplicated: each part is written once.
    honest = [s.submit(None, "toy", "10.0.0.2:2", [rec(40), rec(41)], frame=b"no id")]
    honest += [s.submit(f"dev{i}", "toy", "10.0.0.1:1", [rec(i)], frame=b"honest", transport="tcp")
              for i in range(20)]
    poison = s.submit("devp", "toy", "10.0.0.9:9", [rec(1), rec(2, event="refused"), rec(3)],
                      frame=b"POISON\x00FRAME", transport="udp")
    s.touch("refused-id", "toy", "udp", "10.0.0.8:8")
    s.touch("dev0", "toy", "tcp", "10.0.0.1:1")
    s.learn("refused-id", {"toy.x": "1"})
    s.learn("dev1", {"toy.y": "2"})
    honest += [s.submit(f"dev{i}", "toy", "10.0.0.1:1", [rec(i % 60)], frame=b"honest", transport="tcp")
               for i in range(20, 40)]
    s.start()
    try:
        # Every frame counts as stored, the poison too (its bytes are kept).
        assert [wait_for(d) for d in honest] == [None] * 41
        assert wait_for(poison) is None
        assert count(engine) == 44
        # Last-seen data and settings are isolated after the frames.
        # (On SQLite each part commits on its own: dev1's settings may follow
        # the refused ones a moment later.)
        deadline = time.time() + 20
        while time.time() < deadline:
            with engine.connect() as c:
                rejected = c.execute(select(schema.rejected_records).order_by(
                    schema.rejected_records.c.id)).mappings().all()
                settings = dict(c.execute(select(schema.devices.c.id, schema.devices.c.settings)).all())
            if len(rejected) >= 3 and settings.get("dev1"):
                break
            time.sleep(0.05)
        kinds = {r["kind"]: r for r in rejected}
        assert sorted(kinds) == ["last_seen", "record", "settings"]
        record = kinds["record"]
        assert bytes(record["data"]) == b"POISON\x00FRAME" and record["device_id"] == "devp"
        assert "refused event" in record["reason"] and '"event": "refused"' in record["detail"]
        assert record["peer"] == "10.0.0.9:9" and record["transport"] == "udp"
        assert kinds["last_seen"]["device_id"] == "refused-id"
        assert "refused device" in kinds["last_seen"]["reason"]
        assert kinds["settings"]["device_id"] == "refused-id"
        assert settings["dev1"] == {"toy.y": "2"} and "refused-id" not in settings
        # The writer is not stuck: later work goes through at once.
        assert wait_for(s.submit("dev1", "toy", "p", [rec(59, speed_kmh=1.0)]), timeout=10) is None
        # The same source again: its frames now go apart from the start.
        again = [s.submit("devp", "toy", "10.0.0.9:9", [rec(4), rec(5, event="refused")], frame=b"AGAIN"),
                 s.submit("dev2", "toy", "p", [rec(58, speed_kmh=2.0)])]
        assert [wait_for(d) for d in again] == [None, None]
        assert count(engine) == 47
        with engine.connect() as c:
            assert bytes(c.execute(select(schema.rejected_records.c.data).order_by(
                schema.rejected_records.c.id.desc())).scalars().first()) == b"AGAIN"
        assert s.rejected == 4
    finally:
        wait_for(s.stop())


def test_unit_ids_a_database_refuses_never_halt_storage(db_url):
    # A 100-digit "unit id" ($INFO= datagram) and one with a NUL byte (a
    # SkyPatrol report) used to stay in the writer's last-seen map and fail
    # every later batch on PostgreSQL.
    engine = engine_for(db_url)
    migrate(engine)
    s = Store(engine, ThreadReactor())
    s.start()
    try:
        s.touch("1" * 100, "atrack", "udp", "10.0.0.1:1")
        s.touch("1\x00477583", "skypatrol", "udp", "10.0.0.1:2")
        s.learn("1" * 100, {"atrack.format": "x"})
        assert wait_for(s.submit("dev1", "toy", "p", [rec(0)]), timeout=10) is None
        assert wait_for(s.submit("dev2", "toy", "p", [rec(1)]), timeout=10) is None
        assert count(engine) == 2
        with engine.connect() as c:
            assert sorted(c.execute(select(schema.devices.c.id)).scalars()) == ["dev1", "dev2"]
    finally:
        wait_for(s.stop())


def test_unstorable_values_are_stored_by_rule(db_url):
    engine = engine_for(db_url)
    migrate(engine)
    s = Store(engine, ThreadReactor())
    s.start()
    try:
        bad = Position(time=None, latitude=float("nan"), longitude=1.0, speed_kmh=float("inf"),
                       event="E\x00" + "v" * 100,
                       attributes={"k\x00": "v\x00\ud800", "big": 2 ** 70, "f": float("-inf")})
        assert wait_for(s.submit("dev1", "toy", "p\x00eer", [bad]), timeout=10) is None
        with engine.connect() as c:
            row = c.execute(select(schema.positions)).mappings().one()
            rejected = c.execute(select(func.count()).select_from(schema.rejected_records)).scalar_one()
        assert rejected == 0
        assert row["latitude"] is None and row["speed_kmh"] is None and row["longitude"] == 1.0
        assert row["event"] == ("E\\x00" + "v" * 100)[:64]
        assert row["attributes"] == {"k\\x00": "v\\x00\\ud800", "big": str(2 ** 70), "f": "-inf",
                                     "event_text": "E\\x00" + "v" * 100}
    finally:
        wait_for(s.stop())


def test_rejected_command_lists_them_escaped(sqlite_url, capsys):
    from gateway import cli

    engine = engine_for(sqlite_url)
    migrate(engine)
    s = Store(engine, ThreadReactor())
    s.start()
    try:
        assert wait_for(s.reject("device_id", "not a device id: 1\\x00\x1b[2J", "udp", "10.0.0.1:5",
                                 "skypatrol", "1\x00\x1b[2J", b"\x00\x01raw")) is None
    finally:
        wait_for(s.stop())
    assert cli.main(["rejected", "--db", sqlite_url]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x00" not in out
    assert "1\\x00\\x1b[2J" in out and "000172617" in out and "skypatrol" in out
    assert cli.main(["rejected", "--json", "--db", sqlite_url]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["device_id"] == "1\\x00\\x1b[2J" and row["hex"] == "0001726177"
    assert row["kind"] == "device_id" and row["transport"] == "udp" and row["length"] == 5


# -- a frame's COPY lines are the reference rows, made faster --------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from gateway import storable  # noqa: E402
from gateway.model import ALARMS  # noqa: E402
from gateway.store import _copy_line, copy_lines, position_row  # noqa: E402

_numbers = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))
_records = st.builds(
    Position,
    time=st.one_of(st.none(), st.datetimes(timezones=st.one_of(st.none(), st.timezones()),
                                           min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1))),
    latitude=_numbers, longitude=_numbers, valid=st.booleans(), speed_kmh=_numbers, course=_numbers,
    altitude_m=_numbers, alarm=st.lists(st.sampled_from(sorted(ALARMS)), max_size=3),
    event=st.one_of(st.none(), st.text(max_size=70)),
    attributes=st.dictionaries(st.text(max_size=6), st.one_of(st.text(max_size=8), st.integers(), _numbers),
                               max_size=4))


@settings(max_examples=300, deadline=None)
@given(st.lists(_records, min_size=1, max_size=4), st.text(alphabet="ab\\\t12", min_size=1, max_size=5))
def test_copy_lines_are_the_reference_rows(records, device_id):
    """
    L{copy_lines} writes, for every record, the line L{_copy_line} writes for
    L{position_row}, fingerprint included (L{Position.fingerprint}).
    """
    received = datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=timezone.utc)
    prepared = [storable.prepared(r) for r in records]
    expected = [_copy_line(position_row(device_id, "gosafe", r, received)) for r, _ in prepared]
    assert copy_lines(device_id, "gosafe", prepared, received) == expected
    assert [line.rsplit("\t", 1)[1] for line in expected] == [r.fingerprint() + "\n" for r, _ in prepared]
