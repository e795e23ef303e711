"""
Replies confirm the command whose kind they answer, and two commands of one
device in flight never share a matching token (issue 12), through a real
C{twistd} gateway and the H02 protocol.
"""

import re
import socket
from datetime import datetime

from tests import vectorcheck

from tests.test_commands_e2e import send, status_of, wait_status
from tests.test_e2e import recv_exactly, tcp

DEVICE = "4300250680"


def read_frames(s, count, timeout=15):
    s.settimeout(timeout)
    data = b""
    while data.count(b"#") < count:
        chunk = s.recv(1000)
        if not chunk:
            break
        data += chunk
    return [f + b"#" for f in data.split(b"#") if f]


def test_h02_s20_reply_confirms_the_resume_not_set_interval(gateway, db_url):
    g = gateway(db_url)
    interval = send(g, DEVICE, "set_interval", "--param", "seconds=60")
    resume = send(g, DEVICE, "engine_resume")
    s = tcp(g.port)
    s.sendall(f"*HQ,{DEVICE},HTBT#".encode())
    echo, first, second = read_frames(s, 3)
    assert echo == f"*HQ,{DEVICE},HTBT#".encode()
    assert b",S71," in first and b",S20," in second
    token_interval = re.search(rb",S71,(\d{6}),", first).group(1).decode()
    token_resume = re.search(rb",S20,(\d{6}),", second).group(1).decode()
    # Both were due at once; the second went only when its token differed.
    assert token_interval != token_resume
    assert status_of(g, DEVICE, interval)["session"] == status_of(g, DEVICE, resume)["session"]
    # An S20 reply carrying set_interval's token answers no set_interval.
    s.sendall(f"*HQ,{DEVICE},V4,S20,DONE,{token_interval}#".encode())
    s.sendall(f"*HQ,{DEVICE},V4,S20,DONE,{token_resume}#".encode())
    wait_status(g, DEVICE, resume, "confirmed")
    assert status_of(g, DEVICE, interval)["status"] == "sent"
    s.sendall(f"*HQ,{DEVICE},V4,S71,22,60,{token_interval}#".encode())
    wait_status(g, DEVICE, interval, "confirmed")


def test_engine_resume_cancels_a_queued_custom_and_events_record_every_change(gateway, db_url):
    from sqlalchemy import select

    from gateway import schema
    from gateway.store import engine_for

    g = gateway(db_url)
    custom = send(g, DEVICE, "custom", "--param", f"text=*HQ,{DEVICE},S20,120000,1,1#")
    other = send(g, DEVICE, "engine_stop")
    g.cli("commands", "cancel", str(other))
    resume = send(g, DEVICE, "engine_resume")
    row = status_of(g, DEVICE, custom)
    # A custom command may be an engine stop: it lives no longer than one.
    created, expires = (datetime.fromisoformat(row[k].replace("Z", "+00:00"))
                        for k in ("created_at", "expires_at"))
    assert (expires - created).total_seconds() == 600
    assert row["status"] == "cancelled"
    assert f"engine_resume #{resume}" in status_of(g, DEVICE, custom)["error"]
    assert status_of(g, DEVICE, other)["error"] == "cancelled by the operator"
    short = send(g, DEVICE, "set_interval", "--param", "seconds=30", "--ttl", "0.5")
    wait_status(g, DEVICE, short, "expired")
    engine = engine_for(g.db)
    try:
        with engine.connect() as c:
            events = [(r.command_id, r.status) for r in c.execute(
                select(schema.command_events).order_by(schema.command_events.c.id))]
    finally:
        engine.dispose()
    assert events == [(custom, "queued"), (other, "queued"), (other, "cancelled"),
                      (resume, "queued"), (custom, "cancelled"), (short, "queued"),
                      (short, "expired")]


def test_astra_stop_and_resume_never_share_the_imob_token_in_flight(gateway, db_url):
    vector = next(v for v in vectorcheck.load() if v["id"] == "astra-001")
    imei = vector["expect"]["device_id"]
    g = gateway(db_url)
    s = tcp(g.port)
    s.sendall(b"".join(bytes.fromhex(h) for h in vector["frames_hex"]))
    assert recv_exactly(s, 1) == b"\x06"
    stop = send(g, imei, "engine_stop")
    assert recv_exactly(s, 7) == b"$IMOB,3"
    wait_status(g, imei, stop, "sent")
    resume = send(g, imei, "engine_resume")
    # Both answer "$IMOB,OK": the resume waits until the stop is answered, so
    # a lost reply cannot make the resume's answer confirm the stop.
    s.settimeout(2.0)
    try:
        early = s.recv(100)
    except socket.timeout:
        early = b""
    assert early == b""
    assert status_of(g, imei, resume)["status"] == "queued"
    s.sendall(b"$IMOB,OK\r\n")
    wait_status(g, imei, stop, "confirmed")
    assert recv_exactly(s, 7) == b"$IMOB,0"
    s.sendall(b"$IMOB,OK\r\n")
    wait_status(g, imei, resume, "confirmed")
