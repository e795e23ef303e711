"""
Every vector that expects a reply, replayed against a real C{twistd} gateway
over real sockets: the reply bytes arrive exactly, after the records are in
the database, on TCP and (for frames that are the same on both) on UDP.
"""

import socket
import time

import pytest
from gateway.store import engine_for

from gateway import queries
from tests import vectorcheck
from tests.conftest import Gateway

VECTORS = [v for v in vectorcheck.load() if v.get("expect", {}).get("response_hex")]
TCP = [v for v in VECTORS if v.get("transport", "any") in ("tcp", "any")]
UDP = [v for v in VECTORS if v.get("transport", "any") == "udp"
       or (v.get("transport", "any") == "any" and len(v["frames_hex"]) == 1)]


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("vectors")
    g = Gateway(f"sqlite:///{workdir / 'trackport.db'}", str(workdir)).start()
    yield g
    g.stop()


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


@pytest.mark.parametrize("vec", TCP, ids=vectorcheck.ids(TCP))
def test_tcp_reply(gw, vec):
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
        assert stored(gw, vec), "acked, but no record stored"


@pytest.mark.parametrize("vec", UDP, ids=vectorcheck.ids(UDP))
def test_udp_reply(gw, vec):
    configure(gw, vec)
    want = bytes.fromhex(vec["expect"]["response_hex"])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(10)
    for chunk in vec["frames_hex"]:
        u.sendto(bytes.fromhex(chunk), ("127.0.0.1", gw.port))
    got = b""
    while len(got) < len(want):
        got += u.recvfrom(65536)[0]
    u.close()
    assert got.hex() == want.hex()
    if vec["expect"].get("records"):
        assert stored(gw, vec), "acked, but no record stored"
