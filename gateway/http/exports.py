# -*- test-case-name: tests.test_http -*-
"""
A device's track in the formats mapping tools read: GeoJSON, CSV and GPX 1.1.

Records without a position (no fix) have no place on a map: GeoJSON and GPX
leave them out; CSV, a table, keeps every record.
"""

from __future__ import annotations

import csv
import io
import json
from typing import List
from xml.etree import ElementTree

GPX_NS = "http://www.topografix.com/GPX/1/1"
CSV_COLUMNS = ("id", "device_id", "time", "latitude", "longitude", "valid", "speed_kmh", "course",
               "altitude_m", "alarm", "event", "archive", "server_time", "attributes")

#: Media types of the formats, by name.
MEDIA_TYPES = {
    "json": "application/json",
    "geojson": "application/geo+json",
    "csv": "text/csv; charset=utf-8",
    "gpx": "application/gpx+xml",
}


def _placed(records: List[dict]) -> List[dict]:
    return [r for r in records if r["latitude"] is not None and r["longitude"] is not None]


def geojson(device_id: str, records: List[dict]) -> bytes:
    """
    A FeatureCollection: the track as one LineString, then each record as a
    Point carrying its fields.
    """
    placed = _placed(records)
    features = []
    if len(placed) >= 2:
        features.append({"type": "Feature", "properties": {"device_id": device_id, "kind": "track"},
                         "geometry": {"type": "LineString",
                                      "coordinates": [[r["longitude"], r["latitude"]] for r in placed]}})
    for r in placed:
        properties = {k: v for k, v in r.items() if k not in ("latitude", "longitude")}
        features.append({"type": "Feature", "properties": properties,
                         "geometry": {"type": "Point", "coordinates": [r["longitude"], r["latitude"]]}})
    return json.dumps({"type": "FeatureCollection", "features": features}).encode("utf-8")


def csv_table(records: List[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        row = []
        for column in CSV_COLUMNS:
            value = r.get(column)
            if column == "alarm":
                value = ",".join(value or ())
            elif column == "attributes":
                value = json.dumps(value, sort_keys=True)
            row.append("" if value is None else value)
        writer.writerow(row)
    return out.getvalue().encode("utf-8")


def gpx(device_id: str, records: List[dict]) -> bytes:
    """
    One track, one segment, a point per placed record with its elevation and
    time (GPX 1.1 has no element for speed or course).
    """
    ElementTree.register_namespace("", GPX_NS)
    root = ElementTree.Element(f"{{{GPX_NS}}}gpx", {"version": "1.1", "creator": "trackport"})
    track = ElementTree.SubElement(root, f"{{{GPX_NS}}}trk")
    ElementTree.SubElement(track, f"{{{GPX_NS}}}name").text = device_id
    segment = ElementTree.SubElement(track, f"{{{GPX_NS}}}trkseg")
    for r in _placed(records):
        point = ElementTree.SubElement(segment, f"{{{GPX_NS}}}trkpt",
                                       {"lat": repr(r["latitude"]), "lon": repr(r["longitude"])})
        if r["altitude_m"] is not None:
            ElementTree.SubElement(point, f"{{{GPX_NS}}}ele").text = repr(r["altitude_m"])
        if r["time"] is not None:
            ElementTree.SubElement(point, f"{{{GPX_NS}}}time").text = r["time"]
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
