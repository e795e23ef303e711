"""
Two gateway "hosts" (separate processes on 127.0.0.2 and 127.0.0.3) behind a
real HAProxy in TCP mode sending PROXY headers (v2 to one, v1 to the other),
sharing one PostgreSQL database: devices connect through the balancer, their
records land once, the gateway sees each device's real address, commands reach
devices on either host, and when one host is killed its devices reconnect to
the other and no acked record is lost.
"""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
from sqlalchemy import text

from gateway.store import engine_for
from tests.conftest import free_port
from tests.test_commands_e2e import send, wait_status
from tests.test_e2e import TOY, ToyDevice, recv_exactly, wait_until

HAPROXY = shutil.which("haproxy") or (os.path.exists("/usr/sbin/haproxy") and "/usr/sbin/haproxy")

CONFIG = """
global
    maxconn 2000
defaults
    mode tcp
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout check 2s
    retries 3
    option redispatch
frontend devices
    bind 127.0.0.1:{front}
    default_backend gateways
backend gateways
    balance roundrobin
    server a 127.0.0.2:{a} send-proxy-v2 check check-send-proxy inter 300ms fall 2 rise 1
    server b 127.0.0.3:{b} send-proxy check check-send-proxy inter 300ms fall 2 rise 1
"""


@pytest.fixture
def balanced(gateway, pg_url, tmp_path):
    if not HAPROXY:
        pytest.fail("HAProxy is not installed (apt-get install haproxy); .ci/run installs it")
    hosts = {}
    for name, address in (("a", "127.0.0.2"), ("b", "127.0.0.3")):
        hosts[name] = gateway(pg_url, extra_env=TOY, args=["--interface", address, "--proxy-protocol"])
    front = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(CONFIG.format(front=front, a=hosts["a"].port, b=hosts["b"].port))
    proc = subprocess.Popen([HAPROXY, "-f", str(config), "-db"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    assert wait_until(lambda: _listening(front)), "HAProxy did not start"
    yield hosts, front
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Device(ToyDevice):
    """
    A toy device behind the balancer, which reconnects (and may land on the
    other host) when its connection fails.
    """

    def report_reconnecting(self):
        for _ in range(5):
            try:
                return self.report()
            except (ConnectionError, OSError):
                self.sock.close()
                time.sleep(0.3)
                self.connect()
        raise AssertionError(f"{self.name} could not report through the balancer")


def _host_of(hosts, device):
    for name, g in hosts.items():
        if f"session tcp {device.address} opened (via" in g.output():
            return name
    return None


def test_two_hosts_behind_haproxy(balanced, pg_url):
    hosts, front = balanced
    devices = [Device(front, f"h{i}") for i in range(8)]
    for d in devices:
        d.report()
    where = {d.name: wait_until(lambda d=d: _host_of(hosts, d)) for d in devices}
    assert set(where.values()) == {"a", "b"}, where

    # The gateway knows each device by its real address, not the balancer's.
    engine = engine_for(pg_url)
    assert wait_until(lambda: all(_peer(engine, d.name) == d.address for d in devices)), \
        [(_peer(engine, d.name), d.address) for d in devices]

    # A command reaches a device on each host.
    for host in ("a", "b"):
        d = next(d for d in devices if where[d.name] == host)
        command = send(hosts[host], d.name, "engine_stop")
        want = f"RELAY,1,{command}\n".encode()
        assert recv_exactly(d.sock, len(want)) == want
        wait_status(hosts[host], d.name, command, "sent")

    # Host a dies; its devices reconnect through the balancer to host b.
    hosts["a"].proc.send_signal(signal.SIGKILL)
    hosts["a"].proc.wait(10)
    for d in devices:
        d.report_reconnecting()
        d.report()
    moved = next(d for d in devices if where[d.name] == "a")
    command = send(hosts["b"], moved.name, "engine_resume")
    want = f"RELAY,0,{command}\n".encode()
    assert recv_exactly(moved.sock, len(want)) == want

    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT device_id, attributes->'extra'->>0 AS n, count(*) FROM positions GROUP BY 1, 2")).all()
    engine.dispose()
    stored = {(r[0], r[1]): r[2] for r in rows}
    assert all(count == 1 for count in stored.values())
    for d in devices:
        for n in d.acked:
            assert (d.name, str(n)) in stored, (d.name, n)
    for d in devices:
        d.sock.close()


def _peer(engine, device_id):
    with engine.connect() as connection:
        return connection.execute(text("SELECT last_peer FROM devices WHERE id = :i"), {"i": device_id}).scalar()
