"""
Identity and trust end to end (issue 12): a real C{twistd} gateway, a victim
ATrack unit and an attacker sending the victim's IMEI, over real TCP and UDP
sockets; the operator's view through the real C{trackport} command.
"""

import json
import socket
import time

from tests.test_commands_e2e import assert_nothing_more, send, status_of, wait_status
from tests.test_e2e import recv_exactly, tcp, wait_until

IMEI = "352964052096642"
STOP = b"AT$OUTC=1,1,0,0,0\r\n"


def keepalive(imei=IMEI, seq=1):
    return b"\xfe\x02" + int(imei).to_bytes(8, "big") + seq.to_bytes(2, "big")


def hello(s, seq=1):
    """
    A keep-alive on TCP socket C{s}, and its echo.
    """
    s.sendall(keepalive(seq=seq))
    assert recv_exactly(s, 12) == keepalive(seq=seq)


def udp_socket():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(10)
    return u


def devices(g):
    return {d["id"]: d for d in json.loads(g.cli("devices", "--json").stdout)}


def wait_reason(g, command_id, word, timeout=15):
    row = wait_until(lambda: (lambda r: r if r["status"] == "waiting" and word in (r["error"] or "")
                              else None)(status_of(g, IMEI, command_id)), timeout)
    assert row, f"command {command_id} not waiting for {word}: {status_of(g, IMEI, command_id)}"
    return row


def attacked(g, attacker_send):
    """
    The victim connected and speaking, an attacker claiming its IMEI once,
    then the victim speaking again: a conflict; an engine stop waits, goes to
    neither, and the attacker's $OK confirms nothing.
    """
    victim = tcp(g.port)
    hello(victim, 1)
    attacker_peer = attacker_send(keepalive(seq=7))
    stop = send(g, IMEI, "engine_stop")
    # The attacker spoke last; the victim spoke just before: settling.
    wait_reason(g, stop, "identity settling")
    hello(victim, 2)
    row = wait_reason(g, stop, "identity conflict")
    assert attacker_peer in row["error"] and f"127.0.0.1:{victim.getsockname()[1]}" in row["error"]
    conflict = wait_until(lambda: devices(g)[IMEI].get("conflict"))
    assert attacker_peer in conflict
    table = g.cli("devices").stdout
    assert "conflict" in table and attacker_peer in table
    assert_nothing_more(victim, "the victim got a command while its identity is in conflict")
    attacker_send(b"$OK\r\n")
    time.sleep(1.0)
    assert status_of(g, IMEI, stop)["status"] == "waiting"
    listed = g.cli("commands").stdout
    assert "waiting" in listed and "identity conflict" in listed
    assert g.output().count("identity conflict: device") == 1, g.output()
    return victim, stop


def test_tcp_impostor_gets_nothing_and_victim_gets_the_stop_once_it_leaves(gateway, db_url):
    g = gateway(db_url)
    attacker = tcp(g.port)

    def attacker_send(data):
        attacker.sendall(data)
        if data.startswith(b"\xfe"):
            assert recv_exactly(attacker, 12) == data
        return f"127.0.0.1:{attacker.getsockname()[1]}"

    victim, stop = attacked(g, attacker_send)
    assert_nothing_more(attacker, "the impostor got a command")
    attacker.close()
    # The impostor left: the victim, still connected, gets the stop at once.
    assert recv_exactly(victim, len(STOP), timeout=15) == STOP
    row = wait_status(g, IMEI, stop, "sent")
    assert row["session"].endswith(f"tcp 127.0.0.1:{victim.getsockname()[1]}")
    victim.sendall(b"$OK\r\n")
    wait_status(g, IMEI, stop, "confirmed")
    assert wait_until(lambda: devices(g)[IMEI].get("conflict") is None)


def test_udp_impostor_gets_nothing(gateway, db_url):
    g = gateway(db_url, args=["--claim-window", "15"])
    attacker = udp_socket()

    def attacker_send(data):
        attacker.sendto(data, ("127.0.0.1", g.port))
        if data.startswith(b"\xfe"):
            assert attacker.recvfrom(100)[0] == data
        return f"127.0.0.1:{attacker.getsockname()[1]}"

    victim, stop = attacked(g, attacker_send)
    # The impostor stays silent: once its claim is older than the window the
    # conflict ends and the victim, still speaking, gets the stop.
    deadline = time.time() + 60
    got = b""
    seq = 3
    victim.settimeout(0.5)
    while time.time() < deadline and STOP not in got:
        victim.sendall(keepalive(seq=seq))
        # A device's pace, not a busy loop: its 16-bit counter would wrap.
        seq = seq % 0xFFFF + 1
        try:
            got += victim.recv(100)
        except socket.timeout:
            pass
        time.sleep(0.05)
    assert STOP in got
    attacker.settimeout(1.0)
    try:
        extra = attacker.recvfrom(100)[0]
    except socket.timeout:
        extra = b""
    assert extra == b"", "the impostor got a command"
    victim.sendall(b"$OK\r\n")
    wait_status(g, IMEI, stop, "confirmed")


def test_reply_on_another_session_confirms_nothing(gateway, db_url):
    g = gateway(db_url)
    victim = tcp(g.port)
    hello(victim)
    position = send(g, IMEI, "position_request")
    want = b"AT$GPOS=0\r\n"
    assert recv_exactly(victim, len(want)) == want
    wait_status(g, IMEI, position, "sent")
    # Another peer claims the device, then answers: not on the command's session.
    u = udp_socket()
    u.sendto(keepalive(seq=9), ("127.0.0.1", g.port))
    assert u.recvfrom(100)[0] == keepalive(seq=9)
    u.sendto(b"$OK\r\n", ("127.0.0.1", g.port))
    time.sleep(1.0)
    assert status_of(g, IMEI, position)["status"] == "sent"
    victim.sendall(b"$OK\r\n")
    wait_status(g, IMEI, position, "confirmed")


def test_a_reconnect_is_not_a_conflict(gateway, db_url):
    g = gateway(db_url)
    old = tcp(g.port)
    hello(old)
    old.close()
    new = tcp(g.port)
    hello(new, 2)
    stop = send(g, IMEI, "engine_stop")
    assert recv_exactly(new, len(STOP), timeout=10) == STOP
    wait_status(g, IMEI, stop, "sent")
    assert "identity conflict" not in g.output()


def test_half_open_reconnect_holds_engine_commands_for_the_window_only(gateway, db_url):
    g = gateway(db_url, args=["--claim-window", "8"])
    old = tcp(g.port)
    hello(old)
    old_spoke = time.time()
    new = tcp(g.port)
    hello(new, 2)
    position = send(g, IMEI, "position_request")
    # Not engine-related: at once, on the new connection.
    want = b"AT$GPOS=0\r\n"
    assert recv_exactly(new, len(want)) == want
    wait_status(g, IMEI, position, "sent")
    new.sendall(b"$OK\r\n")
    wait_status(g, IMEI, position, "confirmed")
    stop = send(g, IMEI, "engine_stop")
    wait_reason(g, stop, "identity settling")
    # Once the old connection has been silent for the window, it was a reconnect.
    assert recv_exactly(new, len(STOP), timeout=30) == STOP
    assert time.time() - old_spoke >= 8 - 0.5
    assert_nothing_more(old, "the silent old connection got a command")
    assert "identity conflict" not in g.output()


def test_unanswered_commands_move_when_their_session_closes(gateway, db_url):
    g = gateway(db_url, args=["--claim-window", "2"])
    spare = tcp(g.port)
    hello(spare)
    time.sleep(2.5)
    holder = tcp(g.port)
    hello(holder, 2)
    stop = send(g, IMEI, "engine_stop")
    assert recv_exactly(holder, len(STOP)) == STOP
    first = wait_status(g, IMEI, stop, "sent")
    holder.close()
    assert recv_exactly(spare, len(STOP), timeout=15) == STOP
    row = wait_until(lambda: (lambda r: r if r["status"] == "sent" and r["session"] != first["session"]
                              else None)(status_of(g, IMEI, stop)))
    assert row["session"].endswith(f"tcp 127.0.0.1:{spare.getsockname()[1]}")
    spare.sendall(b"$OK\r\n")
    wait_status(g, IMEI, stop, "confirmed")


def test_allow_list_keeps_unknown_devices_out(gateway, db_url):
    g = gateway(db_url, args=["--devices", "known"])
    s = tcp(g.port)
    s.sendall(keepalive())
    assert_nothing_more(s, "an unknown device was acked")
    unknown = wait_until(lambda: json.loads(g.cli("unknown", "--json").stdout))
    assert unknown[0]["hex"] == keepalive().hex() and "not known" in unknown[0]["reason"]
    assert IMEI not in devices(g)
    g.cli("devices", "add", IMEI, "--protocol", "atrack")
    assert devices(g)[IMEI]["known"] is True

    def acked():
        s.sendall(keepalive(seq=2))
        s.settimeout(1.0)
        try:
            return s.recv(12) == keepalive(seq=2)
        except socket.timeout:
            return False

    assert wait_until(acked, timeout=15)


def test_a_conflict_is_cleared_when_the_gateway_stops(gateway, db_url):
    g = gateway(db_url)
    victim = tcp(g.port)
    hello(victim, 1)
    attacker = udp_socket()
    attacker.sendto(keepalive(seq=5), ("127.0.0.1", g.port))
    assert attacker.recvfrom(100)[0] == keepalive(seq=5)
    hello(victim, 2)
    assert wait_until(lambda: devices(g)[IMEI].get("conflict"))
    g.stop()
    assert devices(g)[IMEI]["conflict"] is None
