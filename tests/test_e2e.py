"""
End to end: a real C{twistd -n trackport} process, real TCP and UDP sockets on
127.0.0.1, real SQLite and PostgreSQL.
"""

import json
import os
import socket
import sqlite3
import time

import pytest
from sqlalchemy import text
from gateway.store import engine_for

from tests.conftest import ROOT

TOY = {"PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests", "plugins")])}


def tcp(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.settimeout(10)
    return s


def recv_exactly(s, n, timeout=10):
    s.settimeout(timeout)
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def positions(g, *args):
    return json.loads(g.cli("positions", "--json", "--limit", "1000", *args).stdout)


def wait_until(predicate, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()



class ToyDevice:
    """
    A toy-protocol device on one TCP connection to C{port}: it numbers its
    reports, one record each, and remembers which were acked.
    """

    def __init__(self, port, name):
        self.port, self.name, self.acked, self.n = port, name, [], 0
        self.connect()

    def connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        self.local_port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.local_port}"

    def report(self):
        self.sock.sendall(f"TOY,{self.name},1,{self.n}\n".encode())
        ack = f"ACK,{self.name}\n".encode()
        if recv_exactly(self.sock, len(ack), timeout=20) != ack:
            raise ConnectionError("no ack")
        self.acked.append(self.n)
        self.n += 1

def test_tcp_records_stored_and_acked(gateway, db_url):
    g = gateway(db_url, extra_env=TOY)
    s = tcp(g.port)
    s.sendall(b"TOY,dev1,2,a\nTOY,")
    assert recv_exactly(s, 9) == b"ACK,dev1\n"
    s.sendall(b"dev1,1\n")
    assert recv_exactly(s, 9) == b"ACK,dev1\n"
    s.close()
    rows = positions(g, "--device", "dev1")
    assert len(rows) == 3
    assert rows[0]["protocol"] == "toy" and rows[0]["latitude"] == 1.0
    assert rows[0]["time"] == "2024-01-01T00:00:00Z" and rows[0]["server_time"].endswith("Z")
    devices = json.loads(g.cli("devices", "--json").stdout)
    assert devices[0]["id"] == "dev1" and devices[0]["protocol"] == "toy"
    assert "device dev1 (toy)" in g.output()


def test_udp_ack_goes_to_the_datagram_source(gateway, db_url):
    g = gateway(db_url, extra_env=TOY)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(10)
    u.sendto(b"TOY,udp1,1\nTOY,udp1,2,x\n", ("127.0.0.1", g.port))
    assert u.recvfrom(100)[0] == b"ACK,udp1\n"
    assert u.recvfrom(100)[0] == b"ACK,udp1\n"
    assert len(positions(g, "--device", "udp1")) == 3


@pytest.mark.parametrize("serve", [False, True], ids=["twistd", "serve"])
def test_udp_peers_caps_the_peer_table(gateway, tmp_path, serve):
    """
    C{--udp-peers N}: N peers remembered. A peer beyond them is not acked
    while every remembered one still counts; once a device's old port is
    superseded by its new one (its claim older than the claim window), the
    old one makes room.
    """
    g = gateway(f"sqlite:///{tmp_path / 'trackport.db'}", extra_env=TOY, serve=serve,
                args=["--udp-peers", "3", "--claim-window", "1"])

    def peer():
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        u.settimeout(10)
        return u

    for n, device in enumerate((b"cap0", b"cap0", b"cap1")):  # the device cap0 behind a NAT: two ports
        u = peer()
        u.sendto(b"TOY,%s,%d\n" % (device, n + 1), ("127.0.0.1", g.port))
        assert u.recvfrom(100)[0] == b"ACK,%s\n" % device
    late = peer()
    late.settimeout(0.5)
    late.sendto(b"TOY,cap2,1\n", ("127.0.0.1", g.port))
    with pytest.raises(socket.timeout):
        late.recvfrom(100)  # the first port of cap0 still counts (settling)
    assert "3 UDP peers remembered (the limit)" in g.output()
    time.sleep(1.2)  # past the claim window: cap0's first port is superseded
    late.settimeout(10)
    late.sendto(b"TOY,cap2,1\n", ("127.0.0.1", g.port))
    assert late.recvfrom(100)[0] == b"ACK,cap2\n"
    assert {p["device_id"] for p in positions(g)} == {"cap0", "cap1", "cap2"}


def test_resent_batch_is_stored_once(gateway, db_url):
    g = gateway(db_url, extra_env=TOY)
    for _ in range(2):
        s = tcp(g.port)
        s.sendall(b"TOY,dev2,5\n")
        assert recv_exactly(s, 9) == b"ACK,dev2\n"
        s.close()
    assert len(positions(g, "--device", "dev2")) == 5


def test_unknown_session_is_logged_stored_and_closed(gateway, sqlite_url):
    g = gateway(sqlite_url, extra_env=TOY)
    s = tcp(g.port)
    s.sendall(b"\x01\x02hello, who am I?")
    assert recv_exactly(s, 1) == b""  # closed by the gateway
    unknown = wait_until(lambda: json.loads(g.cli("unknown", "--json").stdout))
    assert unknown[0]["hex"] == b"\x01\x02hello, who am I?".hex()
    assert b"\x01\x02hello, who am I?".hex() in g.output()


def test_ack_waits_for_the_commit_sqlite(gateway, tmp_path):
    db = tmp_path / "held.db"
    g = gateway(f"sqlite:///{db}", extra_env=TOY)
    s = tcp(g.port)
    s.sendall(b"TOY,dev3,1\n")
    assert recv_exactly(s, 9) == b"ACK,dev3\n"
    blocker = sqlite3.connect(str(db), isolation_level=None, timeout=30)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        s.sendall(b"TOY,dev3,1,held\n")
        s.settimeout(1.5)
        with pytest.raises(socket.timeout):
            s.recv(100)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert recv_exactly(s, 9) == b"ACK,dev3\n"
    assert len(positions(g, "--device", "dev3")) == 2


def test_ack_waits_for_the_commit_postgresql(gateway, pg_url):
    g = gateway(pg_url, extra_env=TOY)
    s = tcp(g.port)
    s.sendall(b"TOY,dev4,1\n")
    assert recv_exactly(s, 9) == b"ACK,dev4\n"
    engine = engine_for(pg_url)
    with engine.connect() as c:
        c.execute(text("LOCK TABLE positions IN ACCESS EXCLUSIVE MODE"))
        s.sendall(b"TOY,dev4,1,held\n")
        s.settimeout(1.5)
        with pytest.raises(socket.timeout):
            s.recv(100)
        c.rollback()
    assert recv_exactly(s, 9) == b"ACK,dev4\n"
    assert len(positions(g, "--device", "dev4")) == 2
    engine.dispose()


def test_bad_frame_from_one_device_loses_nothing_of_another(gateway, sqlite_url):
    g = gateway(sqlite_url, extra_env=TOY)
    bad, good = tcp(g.port), tcp(g.port)
    bad.sendall(b"TOY,bad,BAD\n" + b"TOY,bad,1" + b"\xff" * 300 + b"\n")
    good.sendall(b"TOY,good,3\n")
    assert recv_exactly(good, 9) == b"ACK,good\n"
    assert len(positions(g, "--device", "good")) == 3
    assert "bad frame" in wait_until(lambda: "bad frame" in g.output() and g.output())


def test_trackport_serve_runs_the_same_service(gateway, sqlite_url):
    g = gateway(sqlite_url, extra_env=TOY, serve=True)
    s = tcp(g.port)
    s.sendall(b"TOY,srv1,1\n")
    assert recv_exactly(s, 9) == b"ACK,srv1\n"
    assert len(positions(g, "--device", "srv1")) == 1


def test_two_processes_share_the_port(gateway, pg_url):
    first = gateway(pg_url, extra_env=TOY, args=["--reuse-port"])
    from tests.conftest import Gateway

    second = Gateway(pg_url, first.workdir, extra_env=TOY, args=["--reuse-port"])
    second.port = first.port
    second.log_path = first.log_path + ".2"
    second.start()
    try:
        for i in range(20):
            s = tcp(first.port)
            s.sendall(f"TOY,shared{i},1\n".encode())
            assert recv_exactly(s, len(f"ACK,shared{i}\n")) == f"ACK,shared{i}\n".encode()
            s.close()
        assert len(positions(first)) == 20
        # The kernel spread the connections over both processes.
        assert "device shared" in first.output() and "device shared" in second.output()
    finally:
        second.stop()
