# -*- test-case-name: tests.test_vectors_e2e -*-
"""
What the operator commands read from the database, as JSON-ready dicts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import func, select

from gateway import schema
from gateway.model import isoformat
from gateway.store import utc


def devices(engine, protocol: Optional[str] = None, seen_since: Optional[datetime] = None,
            after: Optional[str] = None, limit: Optional[int] = None):
    """
    Devices in id order; C{after} and C{limit} page through them.
    """
    d = schema.devices.c
    query = select(schema.devices).order_by(d.id)
    if protocol:
        query = query.where(d.protocol == protocol)
    if seen_since is not None:
        query = query.where(d.last_seen >= seen_since)
    if after is not None:
        query = query.where(d.id > after)
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [device_json(r) for r in rows]


def device_json(r) -> dict:
    return {
        "id": r["id"], "protocol": r["protocol"], "transport": r["transport"],
        "first_seen": isoformat(utc(r["first_seen"])), "last_seen": isoformat(utc(r["last_seen"])),
        "last_peer": r["last_peer"], "settings": dict(r["settings"] or {}),
        "known": bool(r["known"]), "conflict": r["conflict"],
        "conflict_at": isoformat(utc(r["conflict_at"])),
    }


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


def positions_after(engine, after_id: int, limit: int, device_id: Optional[str] = None):
    """
    Records with an id above C{after_id}, in id (commit) order: paging that
    stays stable while records are added.
    """
    p = schema.positions.c
    query = select(schema.positions).where(p.id > after_id).order_by(p.id).limit(limit)
    if device_id:
        query = query.where(p.device_id == device_id)
    with engine.connect() as connection:
        return [position_json(r) for r in connection.execute(query).mappings()]


def track(engine, device_id: str, start: Optional[datetime], end: Optional[datetime], limit: int):
    """
    A device's records between two device times, in time order.
    """
    p = schema.positions.c
    query = select(schema.positions).where(p.device_id == device_id).order_by(p.time, p.id).limit(limit)
    if start is not None:
        query = query.where(p.time >= start)
    if end is not None:
        query = query.where(p.time < end)
    with engine.connect() as connection:
        return [position_json(r) for r in connection.execute(query).mappings()]


def latest_position(engine, device_id: str) -> Optional[dict]:
    return latest_positions(engine, [device_id]).get(device_id)


def latest_positions(engine, device_ids) -> dict:
    """
    The latest record of each of C{device_ids}, by device id.
    """
    if not device_ids:
        return {}
    p = schema.positions.c
    latest = select(func.max(p.id)).where(p.device_id.in_(list(device_ids))).group_by(p.device_id)
    with engine.connect() as connection:
        rows = connection.execute(select(schema.positions).where(p.id.in_(latest))).mappings().all()
    return {r["device_id"]: position_json(r) for r in rows}


def last_position_id(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.max(schema.positions.c.id))).scalar() or 0


def unknown(engine, limit: int = 100):
    u = schema.unknown_frames.c
    with engine.connect() as connection:
        rows = connection.execute(
            select(schema.unknown_frames).order_by(u.id.desc()).limit(limit)).mappings().all()
    return [{
        "id": r["id"], "received_at": isoformat(utc(r["received_at"])), "transport": r["transport"],
        "peer": r["peer"], "length": r["length"], "reason": r["reason"],
        "hex": bytes(r["data"]).hex(),
    } for r in reversed(rows)]
