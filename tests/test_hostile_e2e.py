"""
Hostile traffic against a real C{twistd -n trackport} process over real
sockets: a connection that never speaks, an idle flood up to the open-file
limit, a garbage flood, a device id made of terminal control codes, a history
flush in front of an honest device, and the log file of a daemon.
"""

import os
import resource
import socket
import sqlite3
import subprocess
import sys
import threading
import time

from gateway.session import DETECT_SECONDS, ERRORS_PER_PERIOD, GARBAGE_SECONDS, MAX_WAITING
from tests.conftest import free_port
from tests.test_e2e import TOY, recv_exactly, tcp, wait_until


def closed_by_peer(s, timeout):
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_a_connection_that_never_sends_is_dropped_after_the_detection_timeout(gateway, sqlite_url):
    g = gateway(sqlite_url, extra_env=TOY)
    s = tcp(g.port)
    started = time.monotonic()
    assert closed_by_peer(s, DETECT_SECONDS + 20)
    assert time.monotonic() - started >= DETECT_SECONDS - 0.5


def test_idle_flood_to_the_fd_limit_sheds_undetected_connections(gateway, sqlite_url):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the gateway
    try:
        g = gateway(sqlite_url, extra_env=TOY)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    idle = [socket.create_connection(("127.0.0.1", g.port), timeout=10) for _ in range(400)]
    try:
        for name in (b"h1", b"h2"):
            started = time.monotonic()
            s = tcp(g.port)
            s.sendall(b"TOY," + name + b",1\n")
            # Well before any idle connection's detection deadline: the
            # gateway made room by shedding undetected connections.
            assert recv_exactly(s, 7, timeout=DETECT_SECONDS) == b"ACK," + name + b"\n"
            assert time.monotonic() - started < DETECT_SECONDS
            s.close()
        assert "shedding undetected" in g.output()
    finally:
        for s in idle:
            s.close()


def test_garbage_flood_closes_the_session_and_bounds_the_log(gateway, sqlite_url):
    g = gateway(sqlite_url, extra_env=TOY)
    bad = tcp(g.port)
    bad.sendall(b"TOY,flood,1\n")
    assert recv_exactly(bad, 10) == b"ACK,flood\n"
    sent, began = 0, time.monotonic()
    try:
        # 0.5 MB/s, for longer than the gateway tolerates garbage.
        while time.monotonic() - began < GARBAGE_SECONDS + 20:
            bad.sendall(b"\x00garbage" * 1024)
            sent += 9 * 1024
            time.sleep(max(0.0, began + sent / 500_000 - time.monotonic()))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert closed_by_peer(bad, 20)
    assert time.monotonic() - began < GARBAGE_SECONDS + 20
    honest = tcp(g.port)
    honest.sendall(b"TOY,honest,1\n")
    assert recv_exactly(honest, 11) == b"ACK,honest\n"
    log = wait_until(lambda: "garbage" in g.output() and g.output())
    lines = [line for line in log.splitlines() if "device flood" in line]
    # The flood outlasts one error period (both last 10 s): two budgets at most.
    assert len([line for line in lines if "skipped" in line]) <= 2 * ERRORS_PER_PERIOD
    assert any("more errors in" in line for line in lines)
    assert any("closed:" in line and "garbage" in line for line in lines)


def test_device_text_never_reaches_the_log_or_the_terminal_raw(gateway, sqlite_url):
    g = gateway(sqlite_url, extra_env=TOY)
    s = tcp(g.port)
    evil = b"\x1b]0;owned\x07\x1b[2Jx\rFAKE LINE"  # a toy frame ends at a newline
    s.sendall(b"TOY," + evil + b",1\n")
    s.sendall(b"TOY," + evil + b",BAD\n")
    time.sleep(0.5)
    s.close()
    # Control characters make it no device id: logged escaped, kept raw with
    # the reason (trackport rejected), never a device row.
    log = wait_until(lambda: "bad frame" in g.output() and "not a device id" in g.output() and g.output())
    assert "not a device id: \\x1b]0;owned" in log
    assert not any(c in log for c in "\x1b\x07\r")
    table = wait_until(lambda: "owned" in g.cli("rejected").stdout and g.cli("rejected").stdout)
    assert not any(c in table for c in "\x1b\x07\r")
    assert "owned" not in g.cli("devices").stdout


def test_a_history_flush_does_not_queue_ahead_of_an_honest_device(gateway, tmp_path):
    db = tmp_path / "flush.db"
    g = gateway(f"sqlite:///{db}", extra_env=TOY)
    flusher, honest = tcp(g.port), tcp(g.port)
    flusher.sendall(b"TOY,flush,1,warm\n")
    assert recv_exactly(flusher, 10) == b"ACK,flush\n"
    acks = []

    def count_acks():
        flusher.settimeout(60)
        buffered = b""
        while True:
            try:
                data = flusher.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffered += data
            acks.extend([time.monotonic()] * (buffered.count(b"\n")))
            buffered = buffered[buffered.rfind(b"\n") + 1:]

    reader = threading.Thread(target=count_acks, daemon=True)
    reader.start()
    blocker = sqlite3.connect(str(db), isolation_level=None, timeout=30)
    blocker.execute("BEGIN EXCLUSIVE")
    frames = 20_000
    try:
        # History: one record a frame, far more than the per-session bound,
        # sent while the database holds everything back.
        flusher.sendall(b"".join(b"TOY,flush,1,%d\n" % i for i in range(frames)))
        time.sleep(1.0)
        honest.sendall(b"TOY,honest,1\n")
        time.sleep(0.5)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert recv_exactly(honest, 11, timeout=60) == b"ACK,honest\n"
    before = len(acks)
    wait_until(lambda: len(acks) >= frames, timeout=120)
    flusher.close()
    assert len(acks) == frames
    # The honest frame waited behind at most a bound's worth of the flush
    # (and one write batch), not behind the whole history.
    assert before <= 2 * MAX_WAITING + 5000, before


def test_daemon_log_file_is_rotated_with_a_bounded_number_of_files(tmp_path):
    port = free_port()
    env = dict(os.environ, **TOY)
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    subprocess.run([twistd, "--pidfile", str(tmp_path / "twistd.pid"), "trackport", "--port", str(port),
                    "--interface", "127.0.0.1", "--db", f"sqlite:///{tmp_path / 'log.db'}",
                    "--log-size", "2000", "--log-files", "2"], cwd=tmp_path, env=env, check=True,
                   timeout=60)
    log = tmp_path / "twistd.log"
    try:
        assert wait_until(lambda: log.exists() and "trackport ready" in log.read_text(), timeout=30)
        for i in range(40):
            s = tcp(port)
            s.sendall(b"TOY,%d,BAD\n" % i * 5)
            s.close()
        assert wait_until(lambda: os.path.exists(f"{log}.2"), timeout=30)
        time.sleep(1.0)
        assert sorted(p.name for p in tmp_path.glob("twistd.log*")) == [
            "twistd.log", "twistd.log.1", "twistd.log.2"]
        assert oct(log.stat().st_mode & 0o777) == oct(0o640)
    finally:
        pid = int((tmp_path / "twistd.pid").read_text())
        os.kill(pid, 15)
        wait_until(lambda: not os.path.exists(tmp_path / "twistd.pid"), timeout=20)
