# -*- test-case-name: tests.test_http -*-
"""
The OpenAPI 3.1 description of the HTTP API, served at C{/api/openapi.json}.

The tests check real responses against the schemas here, so the document and
the API cannot drift apart unnoticed.
"""

from __future__ import annotations

import copy

from gateway import __version__
from gateway.model import ALARMS, COMMAND_TYPES

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_TIME = {"type": "string", "format": "date-time", "pattern": "Z$"}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_STRING_OR_NULL = {"type": ["string", "null"]}

SCHEMAS = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "string"}, "parameter": {"type": "string"}},
    },
    "Record": {
        "type": "object",
        "required": ["id", "device_id", "protocol", "time", "server_time", "latitude", "longitude", "valid",
                     "speed_kmh", "course", "altitude_m", "alarm", "event", "attributes", "archive"],
        "properties": {
            "id": {"type": "integer", "description": "stable, increasing in commit order"},
            "device_id": _STRING_OR_NULL, "protocol": _STRING_OR_NULL,
            "time": _TIME_OR_NULL, "server_time": _TIME,
            "latitude": _NUMBER_OR_NULL, "longitude": _NUMBER_OR_NULL, "valid": {"type": "boolean"},
            "speed_kmh": _NUMBER_OR_NULL, "course": _NUMBER_OR_NULL, "altitude_m": _NUMBER_OR_NULL,
            "alarm": {"type": "array", "items": {"enum": sorted(ALARMS)}},
            "event": _STRING_OR_NULL, "attributes": {"type": "object"},
            "archive": {"type": "boolean", "description": "buffered history the device sent late"},
        },
    },
    "Session": {
        "type": "object", "required": ["transport", "peer", "protocol", "since", "last_frame"],
        "properties": {"transport": {"enum": ["tcp", "udp"]}, "peer": {"type": "string"},
                       "protocol": _STRING_OR_NULL, "since": _TIME, "last_frame": _TIME},
    },
    "Device": {
        "type": "object",
        "required": ["id", "protocol", "transport", "first_seen", "last_seen", "last_peer", "settings", "online"],
        "properties": {
            "id": {"type": "string"}, "protocol": _STRING_OR_NULL, "transport": _STRING_OR_NULL,
            "first_seen": _TIME_OR_NULL, "last_seen": _TIME_OR_NULL, "last_peer": _STRING_OR_NULL,
            "settings": {"type": "object", "additionalProperties": {"type": "string"}},
            "online": {"type": "boolean", "description": "a live session in this gateway process"},
            "known": {"type": "boolean", "description": "added with trackport devices add (--devices known)"},
            "conflict": {"type": ["string", "null"],
                         "description": "two peers claiming this device id at once: who, since when"},
            "conflict_at": _TIME_OR_NULL,
            "latest": {"oneOf": [{"$ref": "#/components/schemas/Record"}, {"type": "null"}]},
        },
    },
    "DeviceDetail": {
        "allOf": [{"$ref": "#/components/schemas/Device"}, {
            "type": "object", "required": ["latest", "sessions", "conflict"],
            "properties": {
                "latest": {"oneOf": [{"$ref": "#/components/schemas/Record"}, {"type": "null"}]},
                "sessions": {"type": "array", "items": {"$ref": "#/components/schemas/Session"}},
            }}],
    },
    "Command": {
        "type": "object",
        "required": ["id", "device_id", "type", "params", "status", "created_at", "expires_at", "sent_at",
                     "confirmed_at", "finished_at", "reply", "error"],
        "properties": {
            "id": {"type": "integer"}, "device_id": {"type": "string"}, "type": {"enum": sorted(COMMAND_TYPES)},
            "params": {"type": "object"},
            "status": {"type": "string", "description": "queued, sent, confirmed, failed, expired, cancelled"},
            "created_at": _TIME, "expires_at": _TIME_OR_NULL, "sent_at": _TIME_OR_NULL,
            "confirmed_at": _TIME_OR_NULL, "finished_at": _TIME_OR_NULL,
            "reply": _STRING_OR_NULL, "error": _STRING_OR_NULL, "data_hex": _STRING_OR_NULL,
        },
    },
    "NewCommand": {
        "type": "object", "required": ["device_id", "type"],
        "properties": {"device_id": {"type": "string"}, "type": {"enum": sorted(COMMAND_TYPES)},
                       "params": {"type": "object", "additionalProperties": {"type": "string"}},
                       "ttl": {"type": "number", "exclusiveMinimum": 0},
                       "force": {"type": "boolean", "description": "queue for a device never seen nor added"}},
    },
    "UnknownFrame": {
        "type": "object", "required": ["id", "received_at", "transport", "peer", "length", "hex"],
        "properties": {"id": {"type": "integer"}, "received_at": _TIME, "transport": {"enum": ["tcp", "udp"]},
                       "peer": {"type": "string"}, "length": {"type": "integer"}, "reason": _STRING_OR_NULL,
                       "hex": {"type": "string", "description": "the first 1024 bytes"}},
    },
    "DecodeRequest": {
        "type": "object", "required": ["hex"],
        "properties": {"hex": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                       "transport": {"enum": ["tcp", "udp"]},
                       "settings": {"type": "object", "additionalProperties": {"type": "string"}}},
    },
    "DecodeResult": {
        "type": "object", "required": ["protocol", "device_id", "records", "responses_hex", "errors"],
        "properties": {
            "protocol": _STRING_OR_NULL, "device_id": _STRING_OR_NULL,
            "records": {"type": "array", "items": {"type": "object", "required": [
                "time", "latitude", "longitude", "valid", "speed_kmh", "course", "altitude_m", "alarm", "event",
                "attributes"]}},
            "responses_hex": {"type": "array", "items": {"type": "string"}},
            "errors": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Stats": {
        "type": "object", "required": ["sessions", "records_total", "acks", "writer_queue", "database_up",
                                       "commands"],
        "properties": {"sessions": {"type": "array"}, "records_total": {"type": "number"},
                       "acks": {"type": "object"}, "writer_queue": {"type": "integer"},
                       "database_up": {"type": "boolean"}, "commands": {"type": "object"}},
    },
}


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema, description="OK"):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _param(name, where="query", schema=None, description="", required=False):
    return {"name": name, "in": where, "required": required or where == "path",
            "schema": schema or {"type": "string"}, "description": description}


_ERRORS = {"400": _json(_ref("Error"), "a bad parameter (named in the body)"),
           "401": _json(_ref("Error"), "no valid token")}
_LIMIT = _param("limit", schema={"type": "integer", "minimum": 1})

PATHS = {
    "/healthz": {"get": {"summary": "Listening and the database answers (no token)", "security": [],
                         "responses": {"200": _json({"type": "object"}), "503": _json({"type": "object"},
                                                                                       "unhealthy")}}},
    "/metrics": {"get": {"summary": "Prometheus metrics (no token)", "security": [],
                         "responses": {"200": {"description": "text format",
                                               "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    "/api/whoami": {"get": {"summary": "The token's name and rights", "responses": {"200": _json({
        "type": "object", "required": ["name", "read_only"],
        "properties": {"name": {"type": "string"}, "read_only": {"type": "boolean"}}}), **_ERRORS}}},
    "/api/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}},
    "/api/devices": {"get": {
        "summary": "Devices, in id order, a page at a time",
        "parameters": [_param("protocol"), _param("online", schema={"type": "boolean"}),
                       _param("seen_since", schema={"type": "string", "format": "date-time"}),
                       _param("after", description="the last id of the previous page"), _LIMIT,
                       _param("latest", schema={"type": "boolean"},
                              description="add each device's latest record")],
        "responses": {"200": _json({"type": "object", "required": ["devices", "next"], "properties": {
            "devices": {"type": "array", "items": _ref("Device")}, "next": _STRING_OR_NULL}}), **_ERRORS}}},
    "/api/devices/{device_id}": {"get": {
        "summary": "One device, its latest record, live sessions and any identity conflict",
        "parameters": [_param("device_id", "path")],
        "responses": {"200": _json(_ref("DeviceDetail")), "404": _json(_ref("Error")), **_ERRORS}}},
    "/api/devices/{device_id}/track": {"get": {
        "summary": "A device's records between two device times, in time order; JSON, GeoJSON, CSV or GPX",
        "parameters": [_param("device_id", "path"),
                       _param("from", schema={"type": "string", "format": "date-time"}),
                       _param("to", schema={"type": "string", "format": "date-time"}), _LIMIT,
                       _param("format", schema={"enum": ["json", "geojson", "csv", "gpx"]})],
        "responses": {"200": {"description": "the track", "content": {
            "application/json": {"schema": {"type": "object", "required": ["device_id", "records"], "properties": {
                "device_id": {"type": "string"}, "records": {"type": "array", "items": _ref("Record")}}}},
            "application/geo+json": {"schema": {"type": "object"}},
            "text/csv": {"schema": {"type": "string"}},
            "application/gpx+xml": {"schema": {"type": "string"}}}}, **_ERRORS}}},
    "/api/records": {"get": {
        "summary": "Records after an id, in commit order (stable paging under concurrent inserts)",
        "parameters": [_param("after_id", schema={"type": "integer", "minimum": 0}), _param("device_id"), _LIMIT],
        "responses": {"200": _json({"type": "object", "required": ["records", "next_after_id"], "properties": {
            "records": {"type": "array", "items": _ref("Record")},
            "next_after_id": {"type": "integer"}}}), **_ERRORS}}},
    "/api/commands": {
        "get": {"summary": "Commands, newest first",
                "parameters": [_param("device_id"), _param("status"), _LIMIT],
                "responses": {"200": _json({"type": "object", "required": ["commands"], "properties": {
                    "commands": {"type": "array", "items": _ref("Command")}}}), **_ERRORS}},
        "post": {"summary": "Queue a command (not with a read-only token)",
                 "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("NewCommand")}}},
                 "responses": {"201": _json(_ref("Command"), "queued (or failed at once, with the reason)"),
                               "403": _json(_ref("Error"), "read-only token"), **_ERRORS}}},
    "/api/commands/{command_id}": {"get": {
        "summary": "One command", "parameters": [_param("command_id", "path", {"type": "integer"})],
        "responses": {"200": _json(_ref("Command")), "404": _json(_ref("Error")), **_ERRORS}}},
    "/api/commands/{command_id}/cancel": {"post": {
        "summary": "Cancel a queued command (not with a read-only token)",
        "parameters": [_param("command_id", "path", {"type": "integer"})],
        "responses": {"200": _json(_ref("Command")), "403": _json(_ref("Error")), "404": _json(_ref("Error")),
                      "409": _json(_ref("Error"), "no longer queued"), **_ERRORS}}},
    "/api/unknown": {"get": {
        "summary": "Samples of traffic no decoder recognised, newest last", "parameters": [_LIMIT],
        "responses": {"200": _json({"type": "object", "required": ["unknown"], "properties": {
            "unknown": {"type": "array", "items": _ref("UnknownFrame")}}}), **_ERRORS}}},
    "/api/decode": {"post": {
        "summary": "What the gateway makes of some bytes (the trackport decode command)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("DecodeRequest")}}},
        "responses": {"200": _json(_ref("DecodeResult")), "413": _json(_ref("Error")), **_ERRORS}}},
    "/api/stats": {"get": {
        "summary": "Sessions, records, ack latency, writer queue, database and command states (as /metrics)",
        "responses": {"200": _json(_ref("Stats")), **_ERRORS}}},
    "/api/live": {"get": {
        "summary": "WebSocket live feed: records once committed, device online/offline, raw traffic",
        "description": "Upgrade to a WebSocket. Messages are JSON objects {type, data}: type 'record' (a Record, "
                       "in id order, after after_id when given, with no gap and no duplicate), 'device' "
                       "(a session opened or closed), 'raw' (with raw=DEVICE: its bytes in hex, direction in/out).",
        "security": [],
        "parameters": [_param("token", required=True), _param("after_id", schema={"type": "integer"}),
                       _param("raw", description="a device id whose raw traffic to stream")],
        "responses": {"101": {"description": "switching to WebSocket"}, "401": {"description": "no valid token"}}}},
}


def document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "trackport", "version": __version__,
                 "description": "GPS tracker gateway: devices, records, commands, unknown traffic, live feed."},
        "components": {"schemas": copy.deepcopy(SCHEMAS),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": copy.deepcopy(PATHS),
    }
