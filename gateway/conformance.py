# -*- test-case-name: tests.test_conformance -*-
"""
Check vector files — real device frames with what a correct decoder makes of
them — against the installed decoders, in process, through the same path as
C{trackport decode}.

The project's own tests use it on C{tests/vectors/}; a plugin author runs it on
their vectors without this repository's test tree::

    python -m gateway.conformance my_vectors.jsonl [...]

The file format and the tolerances are in C{docs/records.md}, "Vector files".

With C{--dump}, it prints instead what each vector decodes to, with the
fingerprints the store would give its records, one JSON line per vector: two
dumps (before and after a change, or from two interpreters) are compared with
C{diff}.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timezone
from typing import Iterable, List

from gateway.decode import decode
from gateway.storable import prepared

LAT_LON_TOL = 2e-5
SPEED_TOL = 0.6
COURSE_TOL = 1.0
ALT_TOL = 1.0


def read(path: str, name: str = None) -> List[dict]:
    """
    The vectors of one JSON-lines file (blank lines and C{#} comments
    skipped); a vector without an C{id} is named C{<name>:<line>}.
    """
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                vec = json.loads(line)
                vec.setdefault("id", f"{name or path}:{n}")
                out.append(vec)
    return out


def _time(text):
    if text is None:
        return None
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).replace(microsecond=0)


def _close(a, b, tol):
    return a is not None and b is not None and abs(float(a) - float(b)) <= tol


def position_mismatches(want, got):
    """
    How a decoded record C{got} differs from the expected C{want} (a vector's
    C{positions} entry), within the tolerances; empty when it matches.
    """
    bad = []
    if "time" in want and _time(want["time"]) != _time(got.get("time")):
        bad.append(f"time {got.get('time')} != {want['time']}")
    for key, gkey in (("lat", "latitude"), ("lon", "longitude")):
        if key in want and not _close(want[key], got.get(gkey), LAT_LON_TOL):
            bad.append(f"{gkey} {got.get(gkey)} != {want[key]}")
    if "valid" in want and bool(got.get("valid")) != bool(want["valid"]):
        bad.append(f"valid {got.get('valid')} != {want['valid']}")
    if "speed_kmh" in want:
        tol = max(SPEED_TOL, abs(want["speed_kmh"]) * 0.01)
        if not _close(want["speed_kmh"], got.get("speed_kmh"), tol):
            bad.append(f"speed_kmh {got.get('speed_kmh')} != {want['speed_kmh']}")
    if "course" in want and not _close(want["course"], got.get("course"), COURSE_TOL):
        bad.append(f"course {got.get('course')} != {want['course']}")
    if "altitude_m" in want and not _close(want["altitude_m"], got.get("altitude_m"), ALT_TOL):
        bad.append(f"altitude_m {got.get('altitude_m')} != {want['altitude_m']}")
    if "alarm" in want and want["alarm"] not in (got.get("alarm") or []):
        bad.append(f"alarm {got.get('alarm')} lacks {want['alarm']}")
    for key, value in (want.get("attributes") or {}).items():
        have = (got.get("attributes") or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = isinstance(have, (int, float)) and math.isclose(
                float(have), float(value), rel_tol=1e-3, abs_tol=1e-3)
        else:
            ok = have == value
        if not ok:
            bad.append(f"attributes.{key} {have!r} != {value!r}")
    return bad


def _plausible(rec):
    lat, lon = rec.get("latitude"), rec.get("longitude")
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return False
    t = _time(rec.get("time"))
    return t is not None and 2000 <= t.year <= 2040


def run(vec, records: list = None) -> dict:
    """
    Decode a vector's frames; the decode command's JSON object (the records
    themselves added to C{records}).
    """
    transport = vec.get("transport", "any")
    transport = transport if transport in ("tcp", "udp") else "tcp"
    chunks = [bytes.fromhex(h) for h in vec["frames_hex"]]
    return decode(chunks, transport=transport, settings=vec.get("settings") or {}, records=records)


def dump(vec) -> str:
    """
    One JSON line: the vector's id, the decode command's object for it, and
    the fingerprint the store gives each record.
    """
    records = []
    out = run(vec, records)
    # As the store makes them: from the storable record and its attributes'
    # JSON (orjson's, where it is installed and writes the same bytes).
    fingerprints = [record.fingerprint(attributes) for record, attributes in map(prepared, records)]
    return json.dumps({"id": vec["id"], "decode": out, "fingerprints": fingerprints}, sort_keys=True)


def check(vec) -> List[str]:
    """
    The ways the decoded vector differs from its expectation (empty when it
    passes).
    """
    out = run(vec)
    want = vec.get("expect", {})
    bad = []
    if out["protocol"] != vec["protocol"]:
        bad.append(f"protocol {out['protocol']!r} != {vec['protocol']!r}")
    if want.get("device_id") and str(out.get("device_id")) != str(want["device_id"]):
        bad.append(f"device_id {out.get('device_id')!r} != {want['device_id']!r}")
    records = out["records"]
    if want.get("none"):
        if any(r.get("latitude") is not None for r in records):
            bad.append("expected no position")
    else:
        if want.get("records") is not None and len(records) != want["records"]:
            bad.append(f"{len(records)} records != {want['records']}")
        if not records:
            bad.append("no records")
        elif vec.get("basis") == "plausibility" or not want.get("positions"):
            if not any(_plausible(r) for r in records):
                bad.append("no plausible position")
        for i, wp in enumerate(want.get("positions") or []):
            if i >= len(records):
                bad.append(f"record {i} missing")
                break
            bad += [f"record {i}: {m}" for m in position_mismatches(wp, records[i])]
    if want.get("response_hex") is not None:
        got = "".join(out["responses_hex"]).lower()
        if got != want["response_hex"].lower():
            bad.append(f"response {got or '(none)'} != {want['response_hex'].lower()}")
    return bad


def main(paths: Iterable[str], out=sys.stdout) -> int:
    """
    Check every vector of C{paths}; print one line per failing vector and a
    summary line. C{0} when all pass, C{1} otherwise, C{2} without files.
    With C{--dump} among C{paths}, print L{dump} of every vector instead.
    """
    paths = list(paths)
    dumping = "--dump" in paths
    paths = [p for p in paths if p != "--dump"]
    if not paths:
        print("usage: python -m gateway.conformance [--dump] VECTORS.jsonl [...]", file=sys.stderr)
        return 2
    if dumping:
        for path in paths:
            for vec in read(path):
                print(dump(vec), file=out)
        return 0
    passed = failed = 0
    for path in paths:
        for vec in read(path):
            bad = check(vec)
            if bad:
                failed += 1
                print(f"FAIL {vec['id']}: {'; '.join(bad)}", file=out)
            else:
                passed += 1
    print(f"{passed} passed, {failed} failed", file=out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
