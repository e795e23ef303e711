"""
Commands end to end: C{trackport send} in one process, a real C{twistd} gateway
in another, a scripted device on real TCP/UDP sockets.
"""

import json
import socket
import time

from gateway.store import engine_for

from gateway.commands import list_commands
from tests.test_e2e import TOY, recv_exactly, tcp, wait_until


def commands(g, device):
    # The same query as `trackport commands --json`, without a process per poll.
    engine = engine_for(g.db)
    try:
        return list_commands(engine, device)
    finally:
        engine.dispose()


def status_of(g, device, command_id):
    return next(c for c in commands(g, device) if c["id"] == command_id)


def send(g, device, *args):
    # Most tests queue for a device before it first connects: --force.
    return int(g.cli("send", device, *args, "--force").stdout.strip())


def wait_status(g, device, command_id, status, timeout=10):
    row = wait_until(lambda: (lambda r: r if r["status"] == status else None)(
        status_of(g, device, command_id)), timeout)
    assert row, f"command {command_id} never became {status}: {status_of(g, device, command_id)}"
    return row


def assert_nothing_more(s, why):
    s.settimeout(1.0)
    try:
        extra = s.recv(100)
    except socket.timeout:
        extra = b""
    assert extra == b"", why


def test_queued_offline_then_delivered_and_confirmed(gateway, db_url):
    g = gateway(db_url, extra_env=TOY)
    stop = send(g, "car1", "engine_stop")
    custom = send(g, "car1", "custom", "--param", "text=HELLO")
    assert status_of(g, "car1", stop)["status"] == "queued"
    s = tcp(g.port)
    s.sendall(b"PING,car1\n")
    assert recv_exactly(s, 10) == b"PING,car1\n"
    # Delivered in order, exactly as the encoder makes them.
    want = f"RELAY,1,{stop}\n".encode() + b"HELLO\n"
    assert recv_exactly(s, len(want)) == want
    assert wait_status(g, "car1", stop, "sent")["sent_at"]
    s.sendall(f"RE,car1,{stop},OK\n".encode())
    row = wait_status(g, "car1", stop, "confirmed")
    assert row["reply"] == f"RE,car1,{stop},OK" and row["confirmed_at"]
    # A reply without a token answers the oldest command still waiting.
    s.sendall(b"RE,car1,,ERR\n")
    assert wait_status(g, "car1", custom, "failed")["reply"] == "RE,car1,,ERR"


def test_command_for_a_connected_device_arrives_within_a_second(gateway, db_url):
    g = gateway(db_url, extra_env=TOY)
    s = tcp(g.port)
    s.sendall(b"PING,car2\n")
    assert recv_exactly(s, 10) == b"PING,car2\n"
    started = time.time()
    command_id = send(g, "car2", "engine_resume")
    want = f"RELAY,0,{command_id}\n".encode()
    assert recv_exactly(s, len(want), timeout=5) == want
    assert time.time() - started < 3.0


def test_udp_device_gets_commands_after_its_datagram(gateway, db_url):
    g = gateway(db_url, extra_env=TOY)
    command_id = send(g, "udp7", "engine_stop")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(10)
    u.sendto(b"TOY,udp7,1\n", ("127.0.0.1", g.port))
    assert u.recvfrom(100)[0] == b"ACK,udp7\n"
    assert u.recvfrom(100)[0] == f"RELAY,1,{command_id}\n".encode()
    u.sendto(f"RE,udp7,{command_id},OK\n".encode(), ("127.0.0.1", g.port))
    wait_status(g, "udp7", command_id, "confirmed")


def test_expiry_and_engine_resume_cancels_a_queued_stop(gateway, db_url):
    g = gateway(db_url, extra_env=TOY)
    short = send(g, "car3", "position_request", "--ttl", "0.5")
    stop = send(g, "car3", "engine_stop")
    resume = send(g, "car3", "engine_resume")
    assert status_of(g, "car3", stop)["status"] == "cancelled"
    assert f"engine_resume #{resume}" in status_of(g, "car3", stop)["error"]
    wait_status(g, "car3", short, "expired", timeout=5)
    s = tcp(g.port)
    s.sendall(b"PING,car3\n")
    want = b"PING,car3\n" + f"RELAY,0,{resume}\n".encode()
    assert recv_exactly(s, len(want)) == want
    assert_nothing_more(s, "a cancelled or expired command was sent")


def test_unsupported_command_fails_with_a_reason(gateway, db_url):
    g = gateway(db_url, extra_env=TOY)
    s = tcp(g.port)
    s.sendall(b"PING,car4\n")
    assert recv_exactly(s, 10) == b"PING,car4\n"
    # The device is known to be 'toy', which has no reboot encoder: refused at once.
    wait_until(lambda: json.loads(g.cli("devices", "--json").stdout))
    listed = json.loads(g.cli("commands", "--json", "--device", "car4").stdout)
    assert listed == []
    out = g.cli("send", "car4", "reboot", check=False)
    assert out.returncode == 1 and "no encoder for reboot" in out.stderr
    command_id = int(out.stdout.strip())
    assert status_of(g, "car4", command_id)["status"] == "failed"


def test_restart_loses_no_queued_command_and_never_resends(gateway, db_url):
    g = gateway(db_url, extra_env=TOY)
    first = send(g, "car5", "engine_stop")
    s = tcp(g.port)
    s.sendall(b"PING,car5\n")
    want = b"PING,car5\n" + f"RELAY,1,{first}\n".encode()
    assert recv_exactly(s, len(want)) == want
    s.close()
    g.stop()
    second = send(g, "car5", "engine_resume")
    g2 = gateway(db_url, extra_env=TOY)
    s = tcp(g2.port)
    s.sendall(b"PING,car5\n")
    want = b"PING,car5\n" + f"RELAY,0,{second}\n".encode()
    assert recv_exactly(s, len(want)) == want
    assert_nothing_more(s, "the sent command was sent again after the restart")
    assert status_of(g2, "car5", first)["status"] == "sent"
