"""
Commands to real seed protocols, end to end: queued while the device is
offline, delivered when it connects (TCP) or speaks (UDP), bytes exactly as the
protocol reference encodes them, the device's reply matched and the command
marked confirmed — on SQLite and PostgreSQL, through a real twistd process.
"""

import socket

from tests import vectorcheck
from tests.test_commands_e2e import send, status_of, wait_status
from tests.test_e2e import recv_exactly, tcp

VECTORS = {v["id"]: v for v in vectorcheck.load()}


def frame(vector_id):
    return b"".join(bytes.fromhex(h) for h in VECTORS[vector_id]["frames_hex"])


def test_astra_engine_stop_over_tcp(gateway, db_url):
    g = gateway(db_url)
    imei = VECTORS["astra-001"]["expect"]["device_id"]
    stop = send(g, imei, "engine_stop")
    s = tcp(g.port)
    s.sendall(frame("astra-001"))
    # The ack of the report, then the safe-mode immobilise command, no CR LF.
    assert recv_exactly(s, 1 + 7) == b"\x06" + b"$IMOB,3"
    assert status_of(g, imei, stop)["data_hex"] == "24494d4f422c33"
    s.sendall(b"$IMOB,OK\r\n")
    row = wait_status(g, imei, stop, "confirmed")
    assert row["reply"] == "$IMOB,OK"
    # Immediate stop is an explicit parameter; resume releases.
    now = send(g, imei, "engine_stop", "--param", "mode=immediate")
    assert recv_exactly(s, 7) == b"$IMOB,4"
    s.sendall(b"$IMOB,OK\r\n")
    wait_status(g, imei, now, "confirmed")
    resume = send(g, imei, "engine_resume")
    assert recv_exactly(s, 7) == b"$IMOB,0"
    s.sendall(b"$IMOB,UN\r\n")
    assert wait_status(g, imei, resume, "failed")["reply"] == "$IMOB,UN"


def test_gosafe_engine_stop_over_udp(gateway, db_url):
    g = gateway(db_url)
    imei = VECTORS["gosafe-003"]["expect"]["device_id"]
    stop = send(g, imei, "engine_stop")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    u.settimeout(10)
    u.sendto(frame("gosafe-003"), ("127.0.0.1", g.port))
    # The reply to the datagram, then the command, to the datagram's source.
    assert u.recvfrom(100)[0] == b"1234"
    assert u.recvfrom(100)[0] == b"*GS06,DOO0;0#"
    wait_status(g, imei, stop, "sent")
    u.sendto(f"*GS06,{imei},DOO0;0,OK#".encode(), ("127.0.0.1", g.port))
    assert u.recvfrom(100)[0] == b"1234"
    row = wait_status(g, imei, stop, "confirmed")
    assert "DOO0;0" in row["reply"]


def test_h02_relay_confirmation_matched_by_echoed_time(gateway, db_url):
    g = gateway(db_url)
    vec = VECTORS["h02-004"]
    device = vec["expect"]["device_id"]
    stop = send(g, device, "engine_stop")
    other = send(g, device, "custom", "--param", f"text=*HQ,{device},S71,000001,22,30#")
    s = tcp(g.port)
    s.sendall(frame("h02-004"))
    head = f"*HQ,{device},S20,".encode()
    sent = recv_exactly(s, len(head) + 11)
    assert sent[:len(head)] == head and sent.endswith(b",1,1#")
    token = sent[len(head):len(head) + 6].decode()
    assert token.isdigit() and status_of(g, device, stop)["data_hex"] == sent.hex()
    custom = f"*HQ,{device},S71,000001,22,30#".encode()
    assert recv_exactly(s, len(custom)) == custom
    # The device answers the later command first; each reply finds its own
    # command by the time stamp it echoes.
    s.sendall(f"*HQ,{device},V4,S71,000001,104000,A,2235.1777,N,11357.8913,E,000.27,235,130721,"
              f"FFFFFBFF#".encode())
    s.sendall(f"*HQ,{device},V4,S20,DONE,{token},104000,A,2235.1777,N,11357.8913,E,000.27,235,"
              f"130721,FFFFFBFF#".encode())
    assert wait_status(g, device, stop, "confirmed")["reply"] == f"S20,DONE,{token}"
    assert wait_status(g, device, other, "confirmed")
