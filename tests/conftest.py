"""
Shared fixtures: databases (a temporary SQLite file; a fresh PostgreSQL database
per test when C{TRACKPORT_TEST_PG} names a server) and a real C{twistd}
gateway process.
"""

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest
from gateway.store import engine_for
from sqlalchemy.engine import make_url

# The shared test helpers assert too: give their failures pytest's detail.
pytest.register_assert_rewrite("tests.harness")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG = os.environ.get("TRACKPORT_TEST_PG")


def _pg_database():
    base = make_url(PG)
    name = "trackport_" + uuid.uuid4().hex[:12]
    admin = engine_for(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return base, name


def _pg_drop(base, name):
    # WITH (FORCE) ends the database's sessions and drops it in one step: a
    # gateway that is still running (its fixture torn down after this one)
    # reconnects as soon as its session ends, and a separate terminate then
    # DROP lost that race once ("being accessed by other users").
    admin = engine_for(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'trackport.db'}"


@pytest.fixture
def pg_url():
    if not PG:
        pytest.skip("set TRACKPORT_TEST_PG=postgresql://... to run the PostgreSQL tests")
    base, name = _pg_database()
    yield base.set(database=name).render_as_string(hide_password=False)
    _pg_drop(base, name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """
    Each test using it runs on SQLite and on PostgreSQL.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'trackport.db'}"
        return
    if not PG:
        pytest.skip("set TRACKPORT_TEST_PG=postgresql://... to run the PostgreSQL tests")
    base, name = _pg_database()
    yield base.set(database=name).render_as_string(hide_password=False)
    _pg_drop(base, name)


def free_port():
    """
    A port free for both TCP and UDP on 127.0.0.1.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


class Gateway:
    """
    A C{twistd -n trackport} process on 127.0.0.1.
    """

    def __init__(self, db, workdir, extra_env=None, serve=False, args=()):
        self.serve = serve
        self.args = list(args)
        self.db = db
        self.workdir = workdir
        self.port = free_port()
        self.env = dict(os.environ, PYTHONPATH=ROOT)
        self.env.update(extra_env or {})
        self.log_path = os.path.join(workdir, f"twistd-{self.port}.log")
        self.proc = None

    def start(self):
        bindir = os.path.dirname(sys.executable)
        if self.serve:
            argv = [os.path.join(bindir, "trackport"), "serve"]
        else:
            argv = [os.path.join(bindir, "twistd"), "-n", "--pidfile=", "trackport"]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            argv + ["--port", str(self.port), "--interface", "127.0.0.1", "--db", self.db] + self.args,
            cwd=self.workdir, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"twistd exited: {self.output()}")
            if "trackport ready on" in self.output():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"twistd did not start: {self.output()}")

    def output(self):
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def cli(self, *args, check=True):
        """
        Run the C{trackport} command against this gateway's database.
        """
        exe = os.path.join(os.path.dirname(sys.executable), "trackport")
        argv = [exe, *args]
        if args and args[0] not in ("decode",):
            argv += ["--db", self.db]
        out = subprocess.run(argv, cwd=self.workdir, env=self.env, capture_output=True, text=True,
                             timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"{argv} failed: {out.stderr}")
        return out


@pytest.fixture
def gateway(tmp_path):
    """
    Start gateways with C{gateway(db_url)}; all are stopped after the test.
    """
    started = []

    def start(db, **kw):
        g = Gateway(db, str(tmp_path), **kw).start()
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()
