"""
Database faults, end to end on a real C{twistd} gateway: poison frames among
honest traffic, a database that stops answering (a black-holing proxy in front
of PostgreSQL), a gateway started while its database is down, SIGTERM whatever
the database does, and the SQLite file's mode.
"""

import json
import os
import select
import signal
import socket
import stat
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select as sql_select
from sqlalchemy.engine import make_url

from gateway import schema
from gateway.store import engine_for, migrate
from tests.conftest import Gateway
from tests.dbproxy import Proxy
from tests.poison import POISON

# A gosafe frame of three records (vector gosafe-036), unique per device and frame.
RECORD = ("{time},,SYS:G3SC;V3.37;V1.1.8,GPS:A;10;N3.009522;E101.512320;5;137;31;0.69,"
          "COT:27376703,ADC:25.81;4.28;2.60,DTT:5004;E1;0;0;0;3")
ACK = b"1234"
START = datetime(2025, 1, 1, tzinfo=timezone.utc)


def frame(imei: str, n: int) -> bytes:
    base = START + timedelta(seconds=n * 3)
    records = [RECORD.format(time=(base + timedelta(seconds=i)).strftime("%H%M%S%d%m%y")) for i in range(3)]
    return f"*GS06,{imei},".encode() + "$".join(records).encode() + b"#"


class Device(threading.Thread):
    """
    An honest TCP device: sends a frame, waits for its ack, sends the next.
    C{acks} holds (frame number, time acked).
    """

    def __init__(self, port, index):
        super().__init__(daemon=True)
        self.port, self.imei = port, f"86{index:013d}"
        self.acks = []
        self.sent = 0
        self.stop = threading.Event()

    def run(self):
        sock = socket.create_connection(("127.0.0.1", self.port))
        buffer = b""
        try:
            while not self.stop.is_set():
                sock.sendall(frame(self.imei, self.sent))
                self.sent += 1
                while not self.stop.is_set() and ACK not in buffer:
                    if select.select([sock], [], [], 0.2)[0]:
                        data = sock.recv(4096)
                        if not data:
                            return
                        buffer += data
                if ACK in buffer:
                    # Commands may come between acks: skip them.
                    buffer = buffer[buffer.index(ACK) + len(ACK):]
                    self.acks.append((self.sent - 1, time.monotonic()))
                    time.sleep(0.05)
        except OSError:
            pass
        finally:
            sock.close()

    def acked_after(self, moment):
        return [t for _, t in self.acks if t > moment]


@pytest.fixture
def proxy(pg_url):
    url = make_url(pg_url)
    p = Proxy(url.host or "127.0.0.1", url.port or 5432)
    yield p
    p.close()


def wait_until(condition, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def stored(pg_url, table=schema.positions):
    engine = engine_for(pg_url)
    try:
        with engine.connect() as c:
            return c.execute(sql_select(func.count()).select_from(table)).scalar_one()
    finally:
        engine.dispose()


def refuse_astra(pg_url):
    engine = engine_for(pg_url)
    with engine.begin() as c:
        c.exec_driver_sql(
            "CREATE FUNCTION refuse_astra() RETURNS trigger AS $$ BEGIN "
            "IF NEW.protocol = 'astra' THEN RAISE EXCEPTION 'operator rule: no astra records'; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql")
        c.exec_driver_sql("CREATE TRIGGER refuse_astra BEFORE INSERT ON positions "
                          "FOR EACH ROW EXECUTE FUNCTION refuse_astra()")
    engine.dispose()


def send_poison(port, transport, data, expect, seconds=0.0):
    """
    Send one poison frame (TCP: on a connection of its own); the reply received.
    """
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(data, ("127.0.0.1", port))
            if expect:
                s.settimeout(seconds)
                try:
                    return s.recv(4096)
                except OSError:
                    return b""
            return b""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        got = b""
        deadline = time.monotonic() + seconds
        while expect and len(got) < len(expect) and time.monotonic() < deadline:
            if select.select([s], [], [], 0.1)[0]:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        return got


def test_poison_frames_block_no_one(pg_url, gateway):
    from gateway.store import migrate

    engine = engine_for(pg_url)
    migrate(engine)
    engine.dispose()
    refuse_astra(pg_url)
    g = gateway(pg_url)
    devices = [Device(g.port, i) for i in range(4)]
    for d in devices:
        d.start()
    assert wait_until(lambda: all(d.acks for d in devices), 30)
    # Each poison frame, five times a second for four seconds, among honest traffic.
    started = time.monotonic()
    replies = {}
    while time.monotonic() - started < 4:
        for protocol, transport, data, _, expect in POISON:
            replies.setdefault(protocol, []).append(
                send_poison(g.port, transport, data, expect, seconds=10 if expect else 0))
        time.sleep(0.2)
    ended = time.monotonic()
    time.sleep(1)
    for d in devices:
        d.stop.set()
        d.join(5)
    # Honest acks kept flowing: every device acked all along the attack.
    for d in devices:
        during = [t for _, t in d.acks if started <= t <= ended]
        assert len(during) >= 5, f"{d.imei}: {len(during)} acks during the attack"
        gaps = [b - a for a, b in zip([started] + during, during + [ended])]
        assert max(gaps) < 3.0, f"{d.imei}: acks stopped for {max(gaps):.1f}s"
    # Poison frames that want a reply got it: their records are stored by
    # rule, or kept raw.
    assert all(r == b"1234" for r in replies["gosafe"]) and all(r == b"\x06" for r in replies["astra"])
    rows = json.loads(g.cli("rejected", "--json", "--limit", "1000").stdout)
    by_protocol = {}
    for row in rows:
        by_protocol.setdefault(row["protocol"], []).append(row)
    assert {r["kind"] for r in by_protocol["atrack"]} == {"device_id"}
    assert by_protocol["atrack"][0]["reason"] == "not a device id: " + "1" * 100
    assert by_protocol["atrack"][0]["hex"] == POISON[0][2].hex()
    assert by_protocol["skypatrol"][0]["reason"] == "not a device id: 1\\x00477583"
    assert by_protocol["skypatrol"][0]["device_id"] == "1\\x00477583"
    astra = by_protocol["astra"][0]
    assert astra["kind"] == "record" and "no astra records" in astra["reason"]
    assert astra["hex"] == POISON[-1][2].hex() and astra["device_id"] == "860873041761486"
    assert set(by_protocol) == {"atrack", "skypatrol", "astra"}
    # The others are stored, made storable.
    positions = json.loads(g.cli("positions", "--json", "--limit", "100000").stdout)
    by_device = {p["device_id"]: p for p in positions}
    assert by_device["011722001185178"]["event"] == "\\x00"
    assert "gosafe.\\x00sys" in by_device["351535058709775"]["attributes"]
    assert by_device["5905101893"]["attributes"]["h02.bad_time"].startswith("\\x00")
    assert by_device["353327020115804"]["event"] == ("CMD-" + "X" * 100)[:64]
    assert by_device["353327020115804"]["attributes"]["event_text"] == "CMD-" + "X" * 100
    devices_listed = {d["id"] for d in json.loads(g.cli("devices", "--json").stdout)}
    assert "1" * 100 not in devices_listed and not any("\x00" in d for d in devices_listed)
    assert "not a device id" in g.output()


def test_blackholed_database_is_noticed_and_acks_resume(pg_url, proxy, gateway):
    g = gateway(proxy.url(pg_url))
    device = Device(g.port, 1)
    device.start()
    try:
        assert wait_until(lambda: len(device.acks) >= 3, 30)
        proxy.blackhole()
        holed = time.monotonic()
        time.sleep(25)
        # Acks stopped (a frame in flight at the moment may still have been acked).
        assert len(device.acked_after(holed + 2)) == 0
        output = g.output()
        assert output.count("database not answering") == 1, output[-3000:]
        assert "no answer from the database in 10 s" in output
        proxy.forward()
        back = time.monotonic()
        assert wait_until(lambda: device.acked_after(back), 30)
        resumed = device.acked_after(back)[0] - back
        print(f"acks resumed {resumed:.1f}s after the database answered again")
        assert resumed < 20, f"acks resumed {resumed:.1f}s after the database answered"
        assert wait_until(lambda: "database answering again" in g.output(), 10)
        assert g.output().count("database answering again") == 1
    finally:
        device.stop.set()
        device.join(5)
    # Nothing acked is lost.
    acked = len(device.acks)
    assert stored(pg_url) >= 3 * acked


def test_gateway_starts_while_database_is_down(pg_url, proxy, gateway):
    proxy.blackhole()
    g = gateway(proxy.url(pg_url))
    assert wait_until(lambda: "waiting for the database" in g.output(), 30)
    device = Device(g.port, 2)
    device.start()
    try:
        time.sleep(3)
        assert device.acks == [] and device.sent == 1  # held: no ack
        # A command queued meanwhile (straight to the database, which only the
        # gateway cannot reach) for the device already connected. The database
        # has held a gateway before (the operator commands refuse to create a
        # schema); the device is new to it.
        schema_engine = engine_for(pg_url)
        migrate(schema_engine)
        schema_engine.dispose()
        direct = Gateway(pg_url, g.workdir)
        direct.cli("send", device.imei, "engine_stop", "--force")
        proxy.forward()
        back = time.monotonic()
        assert wait_until(lambda: device.acks, 30)
        print(f"first ack {device.acks[0][1] - back:.1f}s after the database came")
        assert device.acks[0][1] - back < 20
        assert wait_until(lambda: len(device.acks) >= 3, 20)
        acked = len(device.acks)
        assert stored(pg_url) >= 3 * acked
        # The command queue started once the database came, and delivered.
        assert wait_until(lambda: json.loads(g.cli("commands", "--json").stdout)[0]["status"] == "sent", 20), g.cli("commands", "--json").stdout
    finally:
        device.stop.set()
        device.join(5)
    assert "database answering after" in g.output()


def _sigterm(g, device) -> float:
    """
    Seconds the gateway takes to exit on SIGTERM; the device then stops.
    """
    began = time.monotonic()
    g.proc.send_signal(signal.SIGTERM)
    g.proc.wait(30)
    took = time.monotonic() - began
    device.stop.set()
    device.join(5)
    return took


@pytest.mark.parametrize("fault", ["blackhole", "refuse"])
def test_sigterm_is_bounded_whatever_the_database_does(pg_url, proxy, gateway, fault):
    g = gateway(proxy.url(pg_url))
    device = Device(g.port, 3)
    device.start()
    assert wait_until(lambda: len(device.acks) >= 3, 30)
    getattr(proxy, fault)()
    time.sleep(3)  # records now wait for the database, unacked
    took = _sigterm(g, device)
    print(f"SIGTERM with the database {fault}: {took:.1f}s")
    assert took <= 10, f"SIGTERM took {took:.1f}s"
    # Nothing acked is lost: the frames acked are all stored.
    assert stored(pg_url) >= 3 * len(device.acks)


def test_sigterm_is_quick_with_a_healthy_database(pg_url, gateway):
    g = gateway(pg_url)
    device = Device(g.port, 4)
    device.start()
    assert wait_until(lambda: len(device.acks) >= 3, 30)
    took = _sigterm(g, device)
    print(f"SIGTERM with a healthy database: {took:.1f}s")
    assert took <= 5, f"SIGTERM took {took:.1f}s"
    assert stored(pg_url) >= 3 * len(device.acks)


def test_sqlite_files_are_private(tmp_path, gateway):
    path = tmp_path / "private.db"
    old = os.umask(0o022)
    try:
        g = gateway(f"sqlite:///{path}")
    finally:
        os.umask(old)
    device = Device(g.port, 5)
    device.start()
    try:
        assert wait_until(lambda: device.acks, 30)
        g.cli("configure", device.imei, "gosafe.output=1")
        for name in ("private.db", "private.db-wal", "private.db-shm"):
            mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
            assert mode & 0o077 == 0, f"{name} is {oct(mode)}"
    finally:
        device.stop.set()
        device.join(5)
