"""
Deadlines on PostgreSQL calls: a server that stops answering without closing
the connection ends the call after the limit, and closing the guard ends calls
at once.
"""

import gc
import sys
import threading
import time

import pytest
from sqlalchemy.exc import OperationalError

from gateway.dbguard import DatabaseUnavailable, Guard, connection_class
from gateway.store import engine_for
from tests.test_faults_e2e import Proxy, proxy  # noqa: F401 (fixture)


def test_a_silent_server_ends_the_call_after_the_limit(pg_url, proxy):  # noqa: F811
    engine = engine_for(proxy.url(pg_url), statement_timeout=1.0)
    try:
        with engine.connect() as c:
            assert c.exec_driver_sql("SELECT 1").scalar() == 1
            proxy.blackhole()
            began = time.monotonic()
            with pytest.raises(OperationalError, match="no answer from the database in 1 s") as caught:
                c.exec_driver_sql("SELECT 2")
            assert isinstance(caught.value.orig, DatabaseUnavailable) and caught.value.connection_invalidated
            assert time.monotonic() - began < 5
    finally:
        proxy.forward()
        engine.dispose()


def test_no_limit_but_close(pg_url):
    engine = engine_for(pg_url)
    errors = []

    def sleeper():
        try:
            with engine.connect() as c:
                c.exec_driver_sql("SELECT pg_sleep(30)")
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=sleeper)
    t.start()
    time.sleep(1.0)
    began = time.monotonic()
    engine.trackport_guard.close(0.2)
    t.join(10)
    assert not t.is_alive() and time.monotonic() - began < 5
    assert isinstance(errors[0].orig, DatabaseUnavailable) and "stopping" in str(errors[0])
    # Closed: no new calls, no new connections.
    with pytest.raises(OperationalError, match="stopping"):
        with engine.connect() as c:
            c.exec_driver_sql("SELECT 1")
    engine.dispose()


def test_a_closed_guard_refuses_before_a_connection_exists():
    """
    No half-made connection object is left for the driver's finaliser
    (psycopg2cffi's fails on one its constructor never set up).
    """
    guard = Guard(None)
    guard.close()
    factory = connection_class(guard)

    def attempt():
        try:
            factory("host=127.0.0.1 dbname=test")
        except DatabaseUnavailable as e:
            return str(e)

    unraisable = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        assert "stopping" in attempt()
        gc.collect()
        gc.collect()  # PyPy runs finalisers after the collection that finds them
    finally:
        sys.unraisablehook = hook
    assert unraisable == []
