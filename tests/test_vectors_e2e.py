"""
Every vector that expects a reply, replayed against a real C{twistd} gateway
over real sockets: the reply bytes arrive exactly, after the records are in
the database, on TCP and (for frames that are the same on both) on UDP.

Each transport has its own gateway and database, so what the UDP run finds
stored was stored by the UDP path.
"""

import socket
import time

import pytest
from gateway.store import engine_for

from gateway import conformance, queries
from tests import vectorcheck
from tests.conftest import Gateway

VECTORS = [v for v in vectorcheck.load() if v.get("expect", {}).get("response_hex")]
TCP = [v for v in VECTORS if v.get("transport", "any") in ("tcp", "any")]
UDP = [v for v in VECTORS if v.get("transport", "any") == "udp"
       or (v.get("transport", "any") == "any" and len(v["frames_hex"]) == 1)]


def _gateway(tmp_path_factory, name):
    workdir = tmp_path_factory.mktemp(name)
    g = Gateway(f"sqlite:///{workdir / 'trackport.db'}", str(workdir)).start()
    yield g
    g.stop()


@pytest.fixture(scope="module")
def gw_tcp(tmp_path_factory):
    yield from _gateway(tmp_path_factory, "vectors-tcp")


@pytest.fixture(scope="module")
def gw_udp(tmp_path_factory):
    yield from _gateway(tmp_path_factory, "vectors-udp")


def configure(gw, vec):
    settings = vec.get("settings") or {}
    device = vec.get("expect", {}).get("device_id")
    if settings:
        if not device:
            pytest.fail("a vector with settings needs an expected device id to configure")
        gw.cli("configure", device, *(f"{k}={v}" for k, v in settings.items()))
        time.sleep(2.5)  # the gateway picks settings up within its 2 s poll


def stored(gw, vec):
    # What `trackport positions --json --device ID` prints, without a process
    # per vector.
    engine = engine_for(gw.db)
    try:
        return queries.positions(engine, vec["expect"].get("device_id"), limit=100000)
    finally:
        engine.dispose()


def assert_stored(gw, vec):
    """
    The vector's records are in this gateway's database: as many rows as it
    expects (at least), and each expected position (time and place) among them.
    """
    want = vec["expect"]
    rows = stored(gw, vec)
    assert len(rows) >= want["records"], f"acked, but {len(rows)} of {want['records']} records stored"
    for position in want.get("positions") or []:
        where = {k: position[k] for k in ("time", "lat", "lon") if k in position}
        assert any(not conformance.position_mismatches(where, row) for row in rows), f"{where} not stored"


@pytest.mark.parametrize("vec", TCP, ids=vectorcheck.ids(TCP))
def test_tcp_reply(gw_tcp, vec):
    gw = gw_tcp
    configure(gw, vec)
    want = bytes.fromhex(vec["expect"]["response_hex"])
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    for chunk in vec["frames_hex"]:
        s.sendall(bytes.fromhex(chunk))
        time.sleep(0.02)
    got = b""
    s.settimeout(10)
    while len(got) < len(want):
        data = s.recv(4096)
        if not data:
            break
        got += data
    s.close()
    assert got.hex() == want.hex()
    if vec["expect"].get("records"):
        assert_stored(gw, vec)


_udp_ports_used: set = set()


def _fresh_udp_socket() -> socket.socket:
    """
    A UDP socket on a source port no earlier vector used: the gateway still
    holds the session of a reused one (with its reply serials, say), and the
    next vector would be answered as that device's next frame.
    """
    spare = []
    try:
        while True:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            if port not in _udp_ports_used:
                _udp_ports_used.add(port)
                return u
            spare.append(u)  # held until a fresh port is found
    finally:
        for u in spare:
            u.close()


@pytest.mark.parametrize("vec", UDP, ids=vectorcheck.ids(UDP))
def test_udp_reply(gw_udp, vec):
    gw = gw_udp
    configure(gw, vec)
    want = bytes.fromhex(vec["expect"]["response_hex"])
    u = _fresh_udp_socket()
    u.settimeout(10)
    for chunk in vec["frames_hex"]:
        u.sendto(bytes.fromhex(chunk), ("127.0.0.1", gw.port))
    got = b""
    while len(got) < len(want):
        got += u.recvfrom(65536)[0]
    u.close()
    assert got.hex() == want.hex()
    if vec["expect"].get("records"):
        assert_stored(gw, vec)
