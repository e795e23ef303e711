# -*- test-case-name: tests.test_vectors_e2e -*-
"""
What the operator commands read from the database, as JSON-ready dicts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import select

from gateway import schema
from gateway.model import isoformat
from gateway.store import utc


def devices(engine):
    d = schema.devices.c
    with engine.connect() as connection:
        rows = connection.execute(select(schema.devices).order_by(d.id)).mappings().all()
    return [{
        "id": r["id"], "protocol": r["protocol"], "transport": r["transport"],
        "first_seen": isoformat(utc(r["first_seen"])), "last_seen": isoformat(utc(r["last_seen"])),
        "last_peer": r["last_peer"], "settings": dict(r["settings"] or {}),
        "known": bool(r["known"]), "conflict": r["conflict"],
        "conflict_at": isoformat(utc(r["conflict_at"])),
    } for r in rows]


def positions(engine, device_id: Optional[str] = None, since: Optional[datetime] = None,
              limit: int = 100):
    """
    The latest C{limit} records (of a device, since a time), oldest first.
    """
    p = schema.positions.c
    query = select(schema.positions).order_by(p.id.desc()).limit(limit)
    if device_id:
        query = query.where(p.device_id == device_id)
    if since is not None:
        query = query.where(p.time >= since)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [position_json(r) for r in reversed(rows)]


def position_json(r) -> dict:
    """
    A C{positions} row as the JSON object of docs/forwarding.md and docs/records.md: the
    record fields plus C{id}, C{device_id}, C{protocol}, C{server_time} and
    C{archive} (the record is buffered history). C{positions --json}, the
    forwarding sinks and the HTTP API all use this one shape.
    """
    attributes = dict(r["attributes"] or {})
    return {
        "id": r["id"], "device_id": r["device_id"], "protocol": r["protocol"],
        "time": isoformat(utc(r["time"])), "server_time": isoformat(utc(r["server_time"])),
        "latitude": r["latitude"], "longitude": r["longitude"], "valid": r["valid"],
        "speed_kmh": r["speed_kmh"], "course": r["course"], "altitude_m": r["altitude_m"],
        "alarm": list(r["alarm"] or []), "event": r["event"], "attributes": attributes,
        "archive": bool(attributes.get("archive")),
    }


def unknown(engine, limit: int = 100):
    u = schema.unknown_frames.c
    with engine.connect() as connection:
        rows = connection.execute(
            select(schema.unknown_frames).order_by(u.id.desc()).limit(limit)).mappings().all()
    return [{
        "received_at": isoformat(utc(r["received_at"])), "transport": r["transport"],
        "peer": r["peer"], "length": r["length"], "reason": r["reason"],
        "hex": bytes(r["data"]).hex(),
    } for r in reversed(rows)]
