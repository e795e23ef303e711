# -*- test-case-name: tests.test_http -*-
"""
The HTTP API (klein on twisted.web, in the gateway process).

Everything under C{/api/} needs C{Authorization: Bearer <token>} (the live
feed takes C{?token=}); read-only tokens may not send or cancel commands.
C{/healthz} and C{/metrics} are open. Answers are JSON; errors are
C{{"error": ...}} with the status that fits, and a bad parameter names
itself. Database reads run on threads: the reactor never waits for them.
"""

from __future__ import annotations

import binascii
import json
import os
from datetime import datetime, timezone
from typing import Optional

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import select, text
from twisted.internet import defer, threads
from twisted.web.static import File
from werkzeug.exceptions import MethodNotAllowed, NotFound

from gateway import queries, schema
from gateway.cli_commands import check_params, supported, try_encoder
from gateway.cliutil import CliError
from gateway.commands import COMMAND_TYPES, cancel, command_json, enqueue
from gateway.decode import decode
from gateway.http import exports, tokens
from gateway.http.openapi import document
from gateway.model import isoformat

#: Records one request may ask for at most.
MAX_LIMIT = 10000
#: Bytes of hex one decode request may carry.
MAX_DECODE_BYTES = 65536


class ApiError(Exception):
    def __init__(self, status: int, message: str, parameter: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.parameter = parameter


def _json(request, value, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(value).encode("utf-8")


def _arg(request, name: str) -> Optional[str]:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[-1].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"{name}: not UTF-8", name) from None


def _int(request, name: str, default: Optional[int], low: int, high: int) -> Optional[int]:
    value = _arg(request, name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, f"{name}: not an integer: {value!r}", name) from None
    if not low <= number <= high:
        raise ApiError(400, f"{name}: must be between {low} and {high}", name)
    return number


def _time(request, name: str) -> Optional[datetime]:
    value = _arg(request, name)
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{name}: not an ISO-8601 time: {value!r}", name) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def _bool(request, name: str) -> Optional[bool]:
    value = _arg(request, name)
    if value is None or value == "":
        return None
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ApiError(400, f"{name}: true or false, not {value!r}", name)


def _body(request) -> dict:
    try:
        body = json.loads(request.content.read(1_000_001) or b"{}")
    except ValueError:
        raise ApiError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


class Api:
    """
    The routes, bound to one gateway's hub, database and metrics.
    """

    app = Klein()

    def __init__(self, hub, engine, metrics, live_resource, tile_url: str = ""):
        self.tile_url = tile_url
        self.hub = hub
        self.engine = engine
        self.metrics = metrics
        self.live_resource = live_resource

    def resource(self):
        return self.app.resource()

    # -- plumbing --------------------------------------------------------

    @defer.inlineCallbacks
    def _authorize(self, request, write: bool = False):
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        grant = yield threads.deferToThread(tokens.verify, self.engine, token)
        if grant is None:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="trackport"')
            raise ApiError(401, "a valid token is needed: Authorization: Bearer <token>")
        if write and grant.read_only:
            raise ApiError(403, f"token {grant.name!r} is read-only")
        return grant

    @app.handle_errors(ApiError)
    def _api_error(self, request, failure):
        e = failure.value
        body = {"error": e.message}
        if e.parameter:
            body["parameter"] = e.parameter
        return _json(request, body, e.status)

    @app.handle_errors(NotFound)
    def _not_found(self, request, failure):
        return _json(request, {"error": "no such resource"}, 404)

    @app.handle_errors(MethodNotAllowed)
    def _not_allowed(self, request, failure):
        return _json(request, {"error": "method not allowed"}, 405)

    # -- open -------------------------------------------------------------

    @app.route("/healthz", methods=["GET"])
    @defer.inlineCallbacks
    def healthz(self, request):
        def ping():
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))

        try:
            yield threads.deferToThread(ping)
        except Exception as e:
            return _json(request, {"status": "unavailable", "reason": f"database: {str(e).splitlines()[0]}"},
                         503)
        if not self.hub.store_.healthy:
            return _json(request, {"status": "unavailable", "reason": "database writes are failing"}, 503)
        return _json(request, {"status": "ok"})

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request):
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.metrics.registry)

    # -- the console --------------------------------------------------------

    @app.route("/", methods=["GET"])
    def root(self, request):
        request.redirect(b"/console/")
        return b""

    @app.route("/console/config.json", methods=["GET"])
    def console_config(self, request):
        # No token: the page needs it before anyone has logged in.
        return _json(request, {"tile_url": self.tile_url})

    @app.route("/console/", branch=True, methods=["GET"])
    def console(self, request):
        return _console_files()

    # -- documents --------------------------------------------------------

    @app.route("/api/openapi.json", methods=["GET"])
    @defer.inlineCallbacks
    def openapi(self, request):
        yield self._authorize(request)
        return _json(request, document())

    @app.route("/api/live", methods=["GET"])
    def live(self, request):
        # The WebSocket checks its own ?token= during the upgrade.
        return self.live_resource

    # -- devices -----------------------------------------------------------

    def _session_json(self, session) -> dict:
        return {"transport": session.transport, "peer": session.peer, "protocol": session.protocol,
                "since": _iso(session.opened), "last_frame": _iso(session.last_seen)}

    def _device_json(self, row: dict, grant) -> dict:
        session = self.hub.sessions.get(row["id"])
        device = dict(row, online=session is not None)
        if grant.read_only:
            # Device passwords live in settings: a read-only token sees that
            # they are set, not what they are.
            device["settings"] = {k: ("***" if "password" in k or "secret" in k else v)
                                  for k, v in device["settings"].items()}
        return device

    @app.route("/api/devices", methods=["GET"])
    @defer.inlineCallbacks
    def devices(self, request):
        grant = yield self._authorize(request)
        protocol = _arg(request, "protocol")
        online = _bool(request, "online")
        since = _time(request, "seen_since")
        after = _arg(request, "after")
        limit = _int(request, "limit", 100, 1, 1000)
        with_latest = _bool(request, "latest")
        found, cursor = [], after
        # "online" is known here, not in the database: read pages until this
        # one is full or the table ends.
        while True:
            rows = yield threads.deferToThread(queries.devices, self.engine, protocol, since, cursor, limit)
            for row in rows:
                cursor = row["id"]
                device = self._device_json(row, grant)
                if online is None or device["online"] == online:
                    found.append(device)
                    if len(found) == limit:
                        break
            if len(found) == limit or len(rows) < limit:
                break
        nxt = found[-1]["id"] if len(found) == limit else None
        if with_latest:
            latest = yield threads.deferToThread(queries.latest_positions, self.engine, [d["id"] for d in found])
            for device in found:
                device["latest"] = latest.get(device["id"])
        return _json(request, {"devices": found, "next": nxt})

    @app.route("/api/whoami", methods=["GET"])
    @defer.inlineCallbacks
    def whoami(self, request):
        grant = yield self._authorize(request)
        return _json(request, {"name": grant.name, "read_only": grant.read_only})

    @app.route("/api/devices/<string:device_id>", methods=["GET"])
    @defer.inlineCallbacks
    def device(self, request, device_id):
        grant = yield self._authorize(request)

        def read():
            d = schema.devices.c
            with self.engine.connect() as connection:
                row = connection.execute(select(schema.devices).where(d.id == device_id)).mappings().first()
            if row is None:
                return None, None
            return row, queries.latest_position(self.engine, device_id)

        row, latest = yield threads.deferToThread(read)
        if row is None:
            raise ApiError(404, f"no device {device_id!r}")
        body = self._device_json(queries.device_json(row), grant)
        session = self.hub.sessions.get(device_id)
        body["latest"] = latest
        body["sessions"] = [self._session_json(session)] if session is not None else []
        return _json(request, body)

    @app.route("/api/devices/<string:device_id>/track", methods=["GET"])
    @defer.inlineCallbacks
    def device_track(self, request, device_id):
        yield self._authorize(request)
        start, end = _time(request, "from"), _time(request, "to")
        limit = _int(request, "limit", 1000, 1, MAX_LIMIT)
        kind = _arg(request, "format") or "json"
        if kind not in exports.MEDIA_TYPES:
            raise ApiError(400, f"format: one of {', '.join(exports.MEDIA_TYPES)}", "format")
        records = yield threads.deferToThread(queries.track, self.engine, device_id, start, end, limit)
        if kind == "json":
            return _json(request, {"device_id": device_id, "records": records})
        request.setHeader(b"Content-Type", exports.MEDIA_TYPES[kind].encode("ascii"))
        request.setHeader(b"Content-Disposition",
                          f'attachment; filename="{_safe_name(device_id)}.{kind}"'.encode("ascii"))
        if kind == "geojson":
            return exports.geojson(device_id, records)
        if kind == "csv":
            return exports.csv_table(records)
        return exports.gpx(device_id, records)

    # -- records -------------------------------------------------------------

    @app.route("/api/records", methods=["GET"])
    @defer.inlineCallbacks
    def records(self, request):
        yield self._authorize(request)
        after_id = _int(request, "after_id", 0, 0, 2 ** 63 - 1)
        limit = _int(request, "limit", 100, 1, MAX_LIMIT)
        device_id = _arg(request, "device_id")
        rows = yield threads.deferToThread(queries.positions_after, self.engine, after_id, limit, device_id)
        return _json(request, {"records": rows, "next_after_id": rows[-1]["id"] if rows else after_id})

    # -- commands ------------------------------------------------------------

    @app.route("/api/commands", methods=["GET"])
    @defer.inlineCallbacks
    def commands(self, request):
        yield self._authorize(request)
        device_id = _arg(request, "device_id")
        status = _arg(request, "status")
        limit = _int(request, "limit", 100, 1, 1000)

        def read():
            c = schema.commands.c
            query = select(schema.commands).order_by(c.id.desc()).limit(limit)
            if device_id:
                query = query.where(c.device_id == device_id)
            if status:
                query = query.where(c.status == status)
            with self.engine.connect() as connection:
                return [command_json(r) for r in connection.execute(query).mappings()]

        return _json(request, {"commands": (yield threads.deferToThread(read))})

    @app.route("/api/commands", methods=["POST"])
    @defer.inlineCallbacks
    def send(self, request):
        yield self._authorize(request, write=True)
        body = _body(request)
        device_id, kind = body.get("device_id"), body.get("type")
        if not isinstance(device_id, str) or not device_id:
            raise ApiError(400, "device_id: a device id is needed", "device_id")
        if kind not in COMMAND_TYPES:
            raise ApiError(400, f"type: one of {', '.join(sorted(COMMAND_TYPES))}", "type")
        params = body.get("params") or {}
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            raise ApiError(400, "params: an object of strings", "params")
        ttl = body.get("ttl")
        if ttl is not None and (not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or ttl <= 0):
            raise ApiError(400, "ttl: a positive number of seconds", "ttl")
        force = body.get("force", False) is True
        # The checks of `trackport send`: parameters, a device that exists,
        # and what its protocol's encoder accepts.
        try:
            check_params(kind, params)
        except CliError as e:
            raise ApiError(400, str(e), "params") from None

        def queue():
            d = schema.devices.c
            with self.engine.connect() as connection:
                device = connection.execute(select(d.protocol, d.settings, d.last_seen, d.known)
                                            .where(d.id == device_id)).first()
            if (device is None or (device.last_seen is None and not device.known)) and not force:
                raise ApiError(400, f"device {device_id} was never seen nor added: check the id, or send "
                                    "\"force\": true to queue it anyway", "device_id")
            if device is not None and device.protocol:
                try:
                    try_encoder(device.protocol, device_id, kind, params, dict(device.settings or {}))
                except CliError as e:
                    raise ApiError(400, str(e), "params") from None
            return enqueue(self.engine, device_id, kind, params, ttl, supported)

        try:
            command_id = yield threads.deferToThread(queue)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        row = yield threads.deferToThread(self._command, command_id)
        return _json(request, row, 201)

    def _command(self, command_id: int) -> Optional[dict]:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(schema.commands).where(schema.commands.c.id == command_id)).mappings().first()
        return None if row is None else command_json(row)

    @app.route("/api/commands/<int:command_id>", methods=["GET"])
    @defer.inlineCallbacks
    def command(self, request, command_id):
        yield self._authorize(request)
        row = yield threads.deferToThread(self._command, command_id)
        if row is None:
            raise ApiError(404, f"no command {command_id}")
        return _json(request, row)

    @app.route("/api/commands/<int:command_id>/cancel", methods=["POST"])
    @defer.inlineCallbacks
    def cancel(self, request, command_id):
        yield self._authorize(request, write=True)

        why_not = yield threads.deferToThread(cancel, self.engine, command_id)
        row = yield threads.deferToThread(self._command, command_id)
        if row is None:
            raise ApiError(404, f"no command {command_id}")
        if why_not is not None:
            raise ApiError(409, why_not)
        return _json(request, row)

    # -- unknown traffic and decoding ------------------------------------------

    @app.route("/api/unknown", methods=["GET"])
    @defer.inlineCallbacks
    def unknown(self, request):
        yield self._authorize(request)
        limit = _int(request, "limit", 100, 1, 1000)
        rows = yield threads.deferToThread(queries.unknown, self.engine, limit)
        return _json(request, {"unknown": rows})

    @app.route("/api/decode", methods=["POST"])
    @defer.inlineCallbacks
    def decode(self, request):
        yield self._authorize(request)
        body = _body(request)
        chunks = body.get("hex")
        if isinstance(chunks, str):
            chunks = [chunks]
        if not isinstance(chunks, list) or not chunks or not all(isinstance(c, str) for c in chunks):
            raise ApiError(400, "hex: a hex string or a list of them", "hex")
        transport = body.get("transport", "tcp")
        if transport not in ("tcp", "udp"):
            raise ApiError(400, "transport: tcp or udp", "transport")
        settings = body.get("settings") or {}
        if not isinstance(settings, dict) or not all(isinstance(v, str) for v in settings.values()):
            raise ApiError(400, "settings: an object of strings", "settings")
        try:
            data = [binascii.unhexlify("".join(c.split())) for c in chunks]
        except (binascii.Error, ValueError):
            raise ApiError(400, "hex: not hexadecimal", "hex") from None
        if sum(len(d) for d in data) > MAX_DECODE_BYTES:
            raise ApiError(413, f"at most {MAX_DECODE_BYTES} bytes a request")
        return _json(request, decode(data, transport=transport, settings=settings))

    # -- what the console's health view shows ----------------------------------

    @app.route("/api/stats", methods=["GET"])
    @defer.inlineCallbacks
    def stats(self, request):
        yield self._authorize(request)
        return _json(request, self.metrics.snapshot())


def _console_files():
    files = File(os.path.join(os.path.dirname(os.path.abspath(__file__)), "console"))
    files.indexNames = ["index.html"]
    files.contentTypes[".js"] = "text/javascript; charset=utf-8"
    files.contentTypes[".css"] = "text/css; charset=utf-8"
    return files


def _iso(seconds: float) -> str:
    return isoformat(datetime.fromtimestamp(seconds, tz=timezone.utc))


def _safe_name(device_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in device_id)[:64] or "track"
