"""
The HTTP API, live feed and metrics (C{--http}) against a real gateway process:
real sockets on 127.0.0.1, real SQLite and PostgreSQL, tokens made with the real
C{trackport token} command, every JSON answer checked against the OpenAPI
document the gateway serves.
"""

import csv
import io
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import geojson
import gpxpy
import pytest
import websocket
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from sqlalchemy import text
from sqlalchemy.engine import make_url

from gateway.store import engine_for
from tests.conftest import ROOT, Gateway, free_port
from tests.dbproxy import Proxy

TOY = {"PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests", "plugins")])}


class Client:
    """
    A gateway started with C{--http}, its tokens, and JSON requests checked
    against the gateway's own OpenAPI document.
    """

    def __init__(self, start, db):
        self.http_port = free_port()
        self.g = start(db, extra_env=TOY, args=["--http", f"127.0.0.1:{self.http_port}"])
        self.token = self.g.cli("token", "create", "ops").stdout.strip()
        self.read_only = self.g.cli("token", "create", "viewer", "--read-only").stdout.strip()
        self.base = f"http://127.0.0.1:{self.http_port}"
        spec = self.get("/api/openapi.json")[1]
        self.spec = spec
        self.registry = Registry().with_resource("urn:trackport", Resource.from_contents(
            {"$schema": "https://json-schema.org/draft/2020-12/schema", **spec}))

    def request(self, method, path, body=None, token="default", raw=False):
        token = self.token if token == "default" else token
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                status, headers, payload = r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            status, headers, payload = e.code, e.headers, e.read()
        if raw:
            return status, headers, payload
        return status, json.loads(payload)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body, **kw):
        return self.request("POST", path, body, **kw)

    def check(self, template, method, status, body):
        """
        C{body} matches the schema the document gives for C{template}'s answer.
        """
        answer = self.spec["paths"][template][method.lower()]["responses"][str(status)]
        schema = answer["content"]["application/json"]["schema"]
        validator = Draft202012Validator({"$ref": "urn:trackport#", **_rebase(schema)},
                                         registry=self.registry)
        errors = sorted(validator.iter_errors(body), key=str)
        assert errors == [], [e.message for e in errors[:3]]
        return body


def _rebase(schema):
    """
    The document's C{#/components/...} references, made to resolve inside it.
    """
    if isinstance(schema, dict):
        return {k: ("urn:trackport" + v if k == "$ref" and v.startswith("#/") else _rebase(v))
                for k, v in schema.items()}
    if isinstance(schema, list):
        return [_rebase(v) for v in schema]
    return schema


def send_toy(port, device, frames, first=0, records=2):
    """
    Send C{frames} toy reports of C{records} records each on one TCP
    connection, waiting for every ack (so the records are committed).
    """
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    ack = f"ACK,{device}\n".encode()
    try:
        for n in range(first, first + frames):
            s.sendall(f"TOY,{device},{records},{n}\n".encode())
            got = b""
            while len(got) < len(ack):
                chunk = s.recv(len(ack) - len(got))
                assert chunk, "connection closed before the ack"
                got += chunk
            assert got == ack
    finally:
        s.close()


def wait_until(predicate, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def api(gateway, db_url):
    """
    A gateway of its own, on SQLite and on PostgreSQL.
    """
    return Client(gateway, db_url)


@pytest.fixture(scope="module")
def sqlite_api(tmp_path_factory):
    """
    One SQLite gateway shared by the tests that need no database of their own
    (each uses device ids of its own).
    """
    workdir = tmp_path_factory.mktemp("http")
    started = []

    def start(db, **kw):
        started.append(Gateway(db, str(workdir), **kw).start())
        return started[-1]

    yield Client(start, f"sqlite:///{workdir / 'trackport.db'}")
    for g in started:
        g.stop()


# -- auth ------------------------------------------------------------------------


def test_every_api_path_needs_a_token(sqlite_api):
    paths = [p.replace("{device_id}", "dev").replace("{command_id}", "1")
             for p in sqlite_api.spec["paths"] if p.startswith("/api/") and p != "/api/live"]
    assert len(paths) >= 10
    for path in paths:
        method = "POST" if path.endswith(("/cancel", "/decode")) else "GET"
        for token in (None, "tp_not-a-token"):
            status, body = sqlite_api.request(method, path, {} if method == "POST" else None, token=token)
            assert status == 401, path
            sqlite_api.check("/api/devices", "GET", 401, body)
    status, headers, _ = sqlite_api.request("GET", "/api/devices", token=None, raw=True)
    assert headers["WWW-Authenticate"].startswith("Bearer")


def test_health_and_metrics_need_no_token(sqlite_api):
    status, body = sqlite_api.get("/healthz", token=None)
    assert (status, body) == (200, {"status": "ok"})
    status, headers, payload = sqlite_api.request("GET", "/metrics", token=None, raw=True)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"trackport_database_up 1.0" in payload


def test_read_only_token_cannot_send_or_cancel(sqlite_api):
    c = sqlite_api
    status, body = c.post("/api/commands", {"device_id": "dev", "type": "reboot", "force": True}, token=c.read_only)
    assert status == 403 and "read-only" in body["error"]
    status, command = c.post("/api/commands", {"device_id": "dev", "type": "engine_stop", "force": True})
    assert status == 201
    status, body = c.post(f"/api/commands/{command['id']}/cancel", {}, token=c.read_only)
    assert status == 403
    # Reading is what read-only tokens are for.
    assert c.get(f"/api/commands/{command['id']}", token=c.read_only)[0] == 200


def test_revoked_token_is_refused(sqlite_api):
    c = sqlite_api
    doomed = c.g.cli("token", "create", "doomed", "--read-only").stdout.strip()
    assert c.get("/api/devices", token=doomed)[0] == 200
    listed = json.loads(c.g.cli("token", "list", "--json").stdout)
    assert {t["name"]: t["read_only"] for t in listed} == {"ops": False, "viewer": True, "doomed": True}
    assert all("tp_" not in json.dumps(t) for t in listed)
    c.g.cli("token", "revoke", "doomed")
    assert c.get("/api/devices", token=doomed)[0] == 401
    assert c.g.cli("token", "revoke", "doomed", check=False).returncode == 1


# -- data ----------------------------------------------------------------------------


def test_devices_records_and_exports(api):
    send_toy(api.g.port, "dev1", 3)
    send_toy(api.g.port, "dev2", 1)
    status, body = api.get("/api/devices")
    api.check("/api/devices", "GET", status, body)
    assert [d["id"] for d in body["devices"]] == ["dev1", "dev2"]
    assert [d["id"] for d in api.get("/api/devices?limit=1")[1]["devices"]] == ["dev1"]
    assert [d["id"] for d in api.get("/api/devices?after=dev1")[1]["devices"]] == ["dev2"]
    assert api.get("/api/devices?protocol=toy&online=true")[1]["devices"] == []

    status, detail = api.get("/api/devices/dev1")
    api.check("/api/devices/{device_id}", "GET", status, detail)
    assert detail["latest"]["device_id"] == "dev1" and detail["latest"]["attributes"]["extra"] == ["2"]
    assert api.get("/api/devices/nobody")[0] == 404

    status, page = api.get("/api/records?limit=4")
    api.check("/api/records", "GET", status, page)
    ids = [r["id"] for r in page["records"]]
    assert len(ids) == 4 and ids == sorted(ids) and page["next_after_id"] == ids[-1]
    rest = api.get(f"/api/records?after_id={ids[-1]}&limit=100")[1]["records"]
    assert len(ids) + len(rest) == 8 and rest[0]["id"] > ids[-1]
    assert all(r["archive"] is False for r in rest)
    assert [r["device_id"] for r in api.get("/api/records?device_id=dev2")[1]["records"]] == ["dev2"] * 2

    status, tracked = api.get("/api/devices/dev1/track?from=2024-01-01T00:00:00Z&to=2024-01-02T00:00:00Z")
    api.check("/api/devices/{device_id}/track", "GET", status, tracked)
    assert len(tracked["records"]) == 6

    status, headers, payload = api.request("GET", "/api/devices/dev1/track?format=geojson", raw=True)
    assert status == 200 and headers["Content-Type"] == "application/geo+json"
    collection = geojson.loads(payload.decode())
    assert collection.is_valid and collection["type"] == "FeatureCollection"
    assert collection["features"][0]["geometry"]["type"] == "LineString"
    assert len(collection["features"]) == 1 + 6

    status, headers, payload = api.request("GET", "/api/devices/dev1/track?format=gpx", raw=True)
    track = gpxpy.parse(payload.decode())
    points = track.tracks[0].segments[0].points
    assert len(points) == 6 and [p.latitude for p in points] == [1.0] * 3 + [2.0] * 3
    assert points[0].time.year == 2024

    status, headers, payload = api.request("GET", "/api/devices/dev1/track?format=csv", raw=True)
    rows = list(csv.DictReader(io.StringIO(payload.decode())))
    assert len(rows) == 6 and rows[0]["device_id"] == "dev1" and float(rows[-1]["latitude"]) == 2.0

    status, body = api.get("/api/devices/dev1/track?format=kml")
    assert status == 400 and body["parameter"] == "format"


@pytest.mark.parametrize("query, parameter", [
    ("/api/records?limit=abc", "limit"), ("/api/records?limit=0", "limit"),
    ("/api/records?after_id=-1", "after_id"), ("/api/devices?online=maybe", "online"),
    ("/api/devices?seen_since=yesterday", "seen_since"), ("/api/devices/x/track?from=soon", "from"),
])
def test_bad_parameters_are_named(sqlite_api, query, parameter):
    status, body = sqlite_api.get(query)
    assert status == 400 and body["parameter"] == parameter
    sqlite_api.check("/api/records", "GET", 400, body)


def test_paging_by_id_is_stable_under_concurrent_inserts(api):
    done = threading.Event()

    def writer():
        try:
            for i in range(4):
                send_toy(api.g.port, f"w{i}", 40, records=3)
        finally:
            done.set()

    threading.Thread(target=writer, daemon=True).start()
    seen, after = [], 0
    while True:
        finished = done.is_set()
        page = api.get(f"/api/records?after_id={after}&limit=7")[1]
        seen += [r["id"] for r in page["records"]]
        after = page["next_after_id"]
        if finished and not page["records"]:
            break
    engine = engine_for(api.g.db)
    with engine.connect() as connection:
        stored = [row[0] for row in connection.execute(text("SELECT id FROM positions ORDER BY id"))]
    engine.dispose()
    assert len(stored) == 4 * 40 * 3
    assert seen == stored


# -- commands ------------------------------------------------------------------------


def test_commands_send_list_get_cancel(api):
    status, body = api.post("/api/commands", {"device_id": "dev9", "type": "engine_stop", "ttl": 60})
    assert status == 400 and body["parameter"] == "device_id" and "never seen" in body["error"]
    status, command = api.post("/api/commands", {"device_id": "dev9", "type": "engine_stop", "ttl": 60,
                                                  "force": True})
    api.check("/api/commands", "POST", status, command)
    assert status == 201 and command["status"] == "queued" and command["type"] == "engine_stop"
    status, one = api.get(f"/api/commands/{command['id']}")
    api.check("/api/commands/{command_id}", "GET", status, one)
    status, listed = api.get("/api/commands?device_id=dev9&status=queued")
    api.check("/api/commands", "GET", status, listed)
    assert [c["id"] for c in listed["commands"]] == [command["id"]]
    status, cancelled = api.post(f"/api/commands/{command['id']}/cancel", {})
    api.check("/api/commands/{command_id}/cancel", "POST", status, cancelled)
    assert cancelled["status"] == "cancelled"
    status, body = api.post(f"/api/commands/{command['id']}/cancel", {})
    assert status == 409 and "cancelled" in body["error"]
    assert api.get("/api/commands/999999")[0] == 404
    for bad, parameter in (({"device_id": "d", "type": "fly"}, "type"), ({"type": "reboot"}, "device_id"),
                           ({"device_id": "d", "type": "reboot", "ttl": -5}, "ttl"),
                           ({"device_id": "d", "type": "reboot", "params": {"a": 1}}, "params"),
                           ({"device_id": "d", "type": "reboot", "params": {"bogus": "1"}, "force": True},
                            "params"),
                           ({"device_id": "d", "type": "custom", "params": {"hex": "zz"}, "force": True},
                            "params")):
        status, body = api.post("/api/commands", bad)
        assert status == 400 and body["parameter"] == parameter


def test_command_reaches_a_connected_device_sent_through_the_api(sqlite_api):
    c = sqlite_api
    s = socket.create_connection(("127.0.0.1", c.g.port), timeout=20)
    s.sendall(b"PING,relay1\n")
    assert s.recv(100) == b"PING,relay1\n"
    # Its row is written with the next last-seen batch (within a second).
    assert wait_until(lambda: c.get("/api/devices/relay1")[0] == 200)
    status, command = c.post("/api/commands", {"device_id": "relay1", "type": "engine_stop"})
    assert status == 201
    assert s.recv(100) == f"RELAY,1,{command['id']}\n".encode()
    s.sendall(f"RE,relay1,{command['id']},OK\n".encode())
    assert wait_until(lambda: c.get(f"/api/commands/{command['id']}")[1]["status"] == "confirmed")
    s.close()


# -- unknown traffic and decode -----------------------------------------------------------


def test_unknown_traffic_and_decode_share_the_decode_path(sqlite_api):
    c = sqlite_api
    s = socket.create_connection(("127.0.0.1", c.g.port), timeout=20)
    s.sendall(b"\x01\x02garbage that no decoder knows\r\n" * 300)
    assert s.recv(10) == b""  # closed as unknown
    s.close()
    status, body = wait_until(lambda: (lambda r: r if r[1]["unknown"] else None)(c.get("/api/unknown")))
    c.check("/api/unknown", "GET", status, body)
    assert body["unknown"][-1]["hex"].startswith("0102676172626167")

    frame = b"TOY,dev5,1,x\n"
    status, decoded = c.post("/api/decode", {"hex": [frame[:5].hex(), frame[5:].hex()]})
    c.check("/api/decode", "POST", status, decoded)
    cli = json.loads(c.g.cli("decode", frame[:5].hex(), frame[5:].hex()).stdout)
    assert decoded == cli and decoded["protocol"] == "toy" and decoded["responses_hex"] == [b"ACK,dev5\n".hex()]
    assert c.post("/api/decode", {"hex": "zz"})[1]["parameter"] == "hex"
    assert c.post("/api/decode", {"hex": "00" * 70000})[0] == 413


# -- metrics and health -------------------------------------------------------------------


def _metrics(c):
    out = {}
    for line in c.request("GET", "/metrics", token=None, raw=True)[2].decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_metrics_follow_the_traffic(sqlite_api):
    c = sqlite_api
    before = _metrics(c)
    s = socket.create_connection(("127.0.0.1", c.g.port), timeout=20)
    s.sendall(b"TOY,m1,3,a\n")
    assert s.recv(100) == b"ACK,m1\n"
    after = _metrics(c)

    def grew(name):
        return after.get(name, 0) - before.get(name, 0)

    assert grew('trackport_records_total{protocol="toy"}') == 3
    assert grew('trackport_frames_total{protocol="toy"}') == 1
    assert grew('trackport_ack_latency_seconds_count{protocol="toy"}') == 1
    assert grew("trackport_writer_batch_records_count") >= 1
    assert after['trackport_sessions{protocol="toy",transport="tcp"}'] >= 1
    status, stats = c.get("/api/stats")
    c.check("/api/stats", "GET", status, stats)
    assert {"protocol": "toy", "transport": "tcp"}.items() <= stats["sessions"][0].items()
    s.close()


def test_healthz_is_503_while_the_database_is_unreachable(gateway, pg_url):
    url = make_url(pg_url)
    cable = Proxy(url.host or "127.0.0.1", url.port or 5432)
    through = url.set(host="127.0.0.1", port=cable.port).render_as_string(hide_password=False)
    try:
        c = Client(gateway, through)
        assert c.get("/healthz", token=None)[0] == 200
        cable.refuse()
        status, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(c.get("/healthz", token=None)))
        assert status == 503 and body["status"] == "unavailable" and body["reason"]
        cable.forward()
        assert wait_until(lambda: c.get("/healthz", token=None)[0] == 200)
    finally:
        cable.close()


# -- live feed ------------------------------------------------------------------------------


def _ws(c, query):
    return websocket.create_connection(f"ws://127.0.0.1:{c.http_port}/api/live?{query}", timeout=20)


def _records(ws, count):
    got = []
    while len(got) < count:
        message = json.loads(ws.recv())
        if message["type"] == "record":
            got.append(message["data"])
    return got


def test_live_feed_needs_a_token(sqlite_api):
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        _ws(sqlite_api, "token=wrong")
    assert e.value.status_code == 401


def test_live_feed_pushes_committed_records_and_resumes_without_gap(api):
    ws = _ws(api, f"token={api.token}")
    s = socket.create_connection(("127.0.0.1", api.g.port), timeout=20)
    s.sendall(b"TOY,live1,2,a\n")
    assert s.recv(100) == b"ACK,live1\n"
    acked = time.monotonic()
    first = _records(ws, 2)
    assert time.monotonic() - acked < 1.0
    assert [r["device_id"] for r in first] == ["live1", "live1"]
    Draft202012Validator(api.spec["components"]["schemas"]["Record"]).validate(dict(first[0], alarm=[]))
    ws.close()
    # While the client is away: records it must get on return, and no more.
    send_toy(api.g.port, "live1", 30, first=100, records=3)
    ws = _ws(api, f"token={api.token}&after_id={first[-1]['id']}")
    missed = _records(ws, 90)
    s.sendall(b"TOY,live1,1,b\n")
    assert s.recv(100) == b"ACK,live1\n"
    after = _records(ws, 1)
    ids = [r["id"] for r in missed + after]
    assert ids == sorted(set(ids)) and ids[0] > first[-1]["id"] and len(ids) == 91
    engine = engine_for(api.g.db)
    with engine.connect() as connection:
        stored = [row[0] for row in connection.execute(
            text("SELECT id FROM positions WHERE id > :i ORDER BY id"), {"i": first[-1]["id"]})]
    engine.dispose()
    assert ids == stored
    ws.close()
    s.close()


def test_live_feed_device_events_and_raw_traffic(sqlite_api):
    c = sqlite_api
    ws = _ws(c, f"token={c.token}&raw=raw1")
    s = socket.create_connection(("127.0.0.1", c.g.port), timeout=20)
    s.sendall(b"TOY,raw1,1,a\n")
    assert s.recv(100) == b"ACK,raw1\n"
    s.sendall(b"TOY,raw1,1,b\n")
    assert s.recv(100) == b"ACK,raw1\n"
    s.close()
    seen = {}
    deadline = time.time() + 15
    while time.time() < deadline and not ("offline" in seen and "out" in seen):
        message = json.loads(ws.recv())
        if message["type"] == "device":
            seen["online" if message["data"]["online"] else "offline"] = message["data"]
        elif message["type"] == "raw":
            seen[message["data"]["direction"]] = message["data"]
    assert seen["online"]["device_id"] == "raw1" and seen["online"]["transport"] == "tcp"
    assert bytes.fromhex(seen["in"]["hex"]) == b"TOY,raw1,1,b"
    assert bytes.fromhex(seen["out"]["hex"]) == b"ACK,raw1\n"
    assert "offline" in seen
    ws.close()


def test_a_client_that_does_not_read_is_dropped_not_buffered(sqlite_api):
    c = sqlite_api
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", c.http_port))
    raw.sendall((f"GET /api/live?token={c.token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert b" 101 " in raw.recv(200)
    # The client reads nothing more; the gateway keeps storing and acking.
    send_toy(c.g.port, "flood", 2500, records=4)
    log = wait_until(lambda: "does not read: dropped" in c.g.output() and c.g.output())
    assert log, "the slow client was not dropped"
    # The honest devices were never held up: the last acks all came (send_toy
    # waits for each), and the gateway still answers.
    assert c.get("/healthz", token=None)[0] == 200
    raw.close()
