"""
What a session logs: one line per TCP connection's protocol and device, none
per UDP peer (a device behind a NAT may use a new port for every datagram).
"""

from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from gateway.hub import Hub, MemoryStore
from gateway.server import DatagramEndpoint
from gateway.session import Session
from tests.toy import toy


def _session_lines(events):
    return [e["log_format"] for e in events if e.get("log_format", "").startswith("session")]


def test_tcp_session_logs_its_protocol_and_device():
    hub = Hub({"toy": toy}, MemoryStore(), Clock())
    with capturedLogs() as events:
        session = Session(hub, "tcp", "127.0.0.1:5000", [].append, lambda: None)
        session.data_received(b"TOY,42,1\n")
        session.connection_lost()
    lines = _session_lines(events)
    assert any("protocol" in line for line in lines)
    assert any("device" in line for line in lines)
    assert any("closed" in line for line in lines)


def test_udp_peers_are_not_logged_one_by_one():
    clock = Clock()
    hub = Hub({"toy": toy}, MemoryStore(), clock)
    endpoint = DatagramEndpoint(hub, idle=100)

    class Transport:
        def write(self, data, addr):
            pass

    endpoint.makeConnection(Transport())
    with capturedLogs() as events:
        for port in range(5000, 5010):
            endpoint.datagramReceived(b"TOY,7,1\n", ("127.0.0.1", port))
        clock.advance(130)
    assert len(hub.store_.records) == 10
    assert _session_lines(events) == []
    endpoint.doStop()
