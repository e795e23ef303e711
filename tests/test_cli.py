"""
The operator CLI refuses mistakes with one clear line (issue 12), always through
the real C{trackport} entry point in a subprocess.
"""

import os
import socket
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from gateway import schema
from gateway.store import engine_for, migrate
from tests.conftest import PG, ROOT, free_port

EXE = os.path.join(os.path.dirname(sys.executable), "trackport")


def run(*args, cwd, env=None, timeout=60):
    environ = {k: v for k, v in os.environ.items() if k not in ("TRACKPORT_DB", "TRACKPORT_CONFIG")}
    environ["PYTHONPATH"] = ROOT
    environ.update(env or {})
    return subprocess.run([EXE, *args], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=timeout)


def one_line(out):
    assert "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    return out.stderr


@pytest.fixture
def db(tmp_path):
    """
    A trackport database with one device that has spoken (atrack) and records.
    """
    path = tmp_path / "data" / "trackport.db"
    path.parent.mkdir()
    url = f"sqlite:///{path}"
    engine = engine_for(url)
    migrate(engine)
    now = datetime.now(timezone.utc)
    with engine.begin() as c:
        c.execute(schema.devices.insert().values(id="352964052096642", protocol="atrack", transport="tcp",
                                                 first_seen=now, last_seen=now, last_peer="1.2.3.4:5",
                                                 settings={}))
        c.execute(schema.positions.insert(), [{
            "device_id": "352964052096642", "protocol": "atrack", "time": now, "server_time": now,
            "latitude": 52.123456789, "longitude": 4.98765, "valid": True, "speed_kmh": 12.3456,
            "alarm": ["sos", "power_cut"], "event": "bad\x1b[31mred", "attributes": {},
            "fingerprint": f"f{i}"} for i in range(300)])
    engine.dispose()
    return url


def test_version(tmp_path):
    out = run("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip().startswith("trackport ")


def test_no_database_is_created_outside_serve(tmp_path):
    for args in (["send", "car", "engine_stop"], ["devices"], ["commands"], ["positions"],
                 ["configure", "car", "gotop.password=123456"]):
        out = run(*args, cwd=tmp_path)
        assert out.returncode == 1
        line = one_line(out)
        assert str(tmp_path / "trackport.db") in line and "--db" in line and "TRACKPORT_DB" in line
        assert os.listdir(tmp_path) == []


def test_config_file_names_the_database(tmp_path, db):
    conf = tmp_path / "trackport.conf"
    conf.write_text(f"[trackport]\ndb = {db}\n")
    out = run("devices", "--config", str(conf), cwd=tmp_path)
    assert out.returncode == 0 and "352964052096642" in out.stdout
    out = run("devices", cwd=tmp_path, env={"TRACKPORT_CONFIG": str(conf)})
    assert out.returncode == 0 and "352964052096642" in out.stdout


def test_send_to_an_unknown_device_needs_force(tmp_path, db):
    out = run("send", "NO_SUCH_DEVICE", "engine_stop", "--db", db, cwd=tmp_path)
    assert out.returncode == 2 and "never seen" in one_line(out)
    assert run("commands", "--json", "--db", db, cwd=tmp_path).stdout.strip() == "[]"
    out = run("send", "NO_SUCH_DEVICE", "engine_stop", "--force", "--db", db, cwd=tmp_path)
    assert out.returncode == 0 and "warning" in out.stderr and out.stdout.strip().isdigit()


@pytest.mark.parametrize("args, why", [
    (["set_interval", "--param", "seconds=abc"], "seconds must be a whole number"),
    (["custom", "--param", "hex=zz"], "not hexadecimal"),
    (["set_interval", "--param", "bogus=1"], "no parameter 'bogus'"),
    (["engine_stop", "--ttl", "-5"], "--ttl must be"),
    (["custom", "--param", "text=AT$GPOS=0\r\nAT$REST=1,0"], "atrack cannot encode"),
    (["set_interval", "--param", "seconds=70000"], "atrack cannot encode"),
    (["fly"], "unknown command 'fly'"),
])
def test_send_validates_parameters(tmp_path, db, args, why):
    out = run("send", "352964052096642", *args, "--db", db, cwd=tmp_path)
    assert out.returncode == 2 and why in one_line(out)
    assert run("commands", "--json", "--db", db, cwd=tmp_path).stdout.strip() == "[]"


def test_positions_since_and_limit(tmp_path, db):
    out = run("positions", "--since", "yesterday", "--limit", "2", "--db", db, cwd=tmp_path)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 3
    for bad in (["--since", "someday"], ["--limit", "-1"], ["--limit", "0"]):
        out = run("positions", *bad, "--db", db, cwd=tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr and "error" in out.stderr


def test_tables_are_readable(tmp_path, db):
    out = run("positions", "--limit", "1", "--db", db, cwd=tmp_path)
    assert "52.123457" in out.stdout and "12.3" in out.stdout and "12.3456" not in out.stdout
    assert "sos, power_cut" in out.stdout and "['" not in out.stdout
    assert "\x1b" not in out.stdout and "bad\\x1b[31mred" in out.stdout


def test_piping_into_head_is_quiet(tmp_path, db):
    out = subprocess.run(f"'{EXE}' positions --limit 300 --db '{db}' | head -1", shell=True,
                         cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.stdout.startswith("device_id") and out.stderr == ""


def test_commands_cancel_status_and_limit(tmp_path, db):
    ids = [run("send", "352964052096642", "engine_stop", "--db", db, cwd=tmp_path).stdout.strip()
           for _ in range(3)]
    out = run("commands", "cancel", ids[0], "--db", db, cwd=tmp_path)
    assert out.returncode == 0
    out = run("commands", "cancel", ids[0], "--db", db, cwd=tmp_path)
    assert out.returncode == 1 and "is cancelled" in one_line(out)
    out = run("commands", "cancel", "999", "--db", db, cwd=tmp_path)
    assert out.returncode == 1 and "no command 999" in one_line(out)
    out = run("commands", "--status", "queued", "--limit", "1", "--db", db, cwd=tmp_path)
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith(ids[2])


def test_configure_refuses_unknown_keys_and_bad_values(tmp_path, db):
    out = run("configure", "352964052096642", "atrack.password=x\r\nAT$REST=1,0", "--db", db, cwd=tmp_path)
    assert out.returncode == 2 and "atrack.password" in one_line(out)
    out = run("configure", "352964052096642", "atrack.pasword=abc", "--db", db, cwd=tmp_path)
    assert out.returncode == 2 and "unknown setting 'atrack.pasword'" in one_line(out)
    out = run("configure", "352964052096642", "gotop.password=123456", "--db", db, cwd=tmp_path)
    assert out.returncode == 2 and "speaks atrack" in one_line(out)
    out = run("configure", "352964052096642", "atrack.password=abc123", "--db", db, cwd=tmp_path)
    assert out.returncode == 0 and '"atrack.password": "abc123"' in out.stdout
    out = run("decode", "--set", "atrack.bogus=1", "fe0200014104d8f196820001", cwd=tmp_path)
    assert out.returncode == 2 and "unknown setting" in one_line(out)


def _serve(tmp_path, *args):
    return run("serve", "--interface", "127.0.0.1", *args, cwd=tmp_path, timeout=90)


def test_serve_start_failures_are_one_line_and_leave_no_file(tmp_path):
    port = free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", port))
    taken.listen(1)
    try:
        out = _serve(tmp_path, "--port", str(port))
    finally:
        taken.close()
    assert out.returncode == 1 and "cannot start" in one_line(out)
    cases = [
        (["--db", "notaurl"], 2, "not a database URL"),
        (["--db", "mysql://u@127.0.0.1/x"], 2, "unsupported database"),
        (["--db", f"sqlite:///{tmp_path}/no/such/dir/x.db"], 1, "cannot start"),
    ]
    if PG:
        # A server that answers "no such database" (a server that is down is
        # waited for instead: tests/test_faults_e2e.py).
        cases.append((["--db", _no_such_database()], 1, "cannot start"))
    for args, code, why in cases:
        out = _serve(tmp_path, "--port", str(free_port()), *args)
        assert out.returncode == code and why in one_line(out), (args, out.stderr)
    out = run("serve", "--interface", "192.0.2.1", "--port", str(free_port()), cwd=tmp_path, timeout=90)
    assert out.returncode == 1 and "cannot start" in one_line(out)
    assert os.listdir(tmp_path) == []


def _no_such_database():
    from sqlalchemy.engine import make_url

    return make_url(PG).set(database="trackport_no_such_database").render_as_string(hide_password=False)


def test_the_systemd_unit_verifies(tmp_path):
    import shutil

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    with open(os.path.join(ROOT, "docs", "trackport.service")) as fh:
        unit = fh.read().replace("/opt/trackport/.venv/bin/twistd",
                                 os.path.join(os.path.dirname(sys.executable), "twistd"))
    (tmp_path / "trackport.service").write_text(unit)
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "trackport.service")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_twistd_start_failures_are_one_line_and_leave_no_file(tmp_path):
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TRACKPORT_DB", None)
    port = free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", port))
    taken.listen(1)
    try:
        out = subprocess.run([twistd, "-n", "--pidfile=", "trackport", "--interface", "127.0.0.1",
                              "--port", str(port)], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=90)
    finally:
        taken.close()
    both = out.stdout + out.stderr
    assert out.returncode == 1 and "Traceback" not in both
    assert "twistd trackport: cannot start: Couldn't listen on 127.0.0.1" in both
    if PG:
        out = subprocess.run([twistd, "-n", "--pidfile=", "trackport", "--port", str(free_port()),
                              "--db", _no_such_database()], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=90)
        assert out.returncode == 1 and "cannot start" in one_line(out)
    assert os.listdir(tmp_path) == []
