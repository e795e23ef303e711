# -*- test-case-name: tests.test_store -*-
"""
Value classes passed between decoders, sessions, the store and the command queue.

They are frozen L{attrs} classes: a decoder builds them, nothing downstream
mutates them.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Mapping, Optional, Tuple

import attrs

#: The alarm names a record may carry (docs/records.md, "Alarms").
ALARMS = frozenset(
    """sos power_cut power_restored low_battery low_power vibration movement
    overspeed geofence_enter geofence_exit tampering door accident
    harsh_acceleration harsh_braking harsh_cornering idle gps_antenna_cut jamming
    fuel_leak temperature parking removing fall_down general""".split()
)

#: Command types the gateway knows (docs/commands.md).
COMMAND_TYPES = frozenset(
    ["engine_stop", "engine_resume", "position_request", "reboot", "set_interval", "custom"]
)

#: The states of a queued command (docs/commands.md).
COMMAND_STATUSES = ("queued", "waiting", "sent", "confirmed", "failed", "expired", "cancelled")


_UTC = timezone.utc


def _utc(value: Optional[datetime]) -> Optional[datetime]:
    if value is None:
        return None
    tzinfo = value.tzinfo
    if tzinfo is _UTC:
        # What every decoder makes; astimezone() would return it as it is.
        return value
    if tzinfo is None:
        return value.replace(tzinfo=_UTC)
    return value.astimezone(_UTC)


def _alarms(value) -> Tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, str):
        value = [value]
    unknown = [a for a in value if a not in ALARMS]
    if unknown:
        raise ValueError(f"alarm names outside the vocabulary: {unknown}")
    # Keep the decoder's order but drop repeats: one alarm is reported once.
    return tuple(dict.fromkeys(value))


def isoformat(value: Optional[datetime]) -> Optional[str]:
    """
    Format a UTC time the way every output of trackport does: ISO-8601 with C{Z}.
    """
    if value is None:
        return None
    if value.tzinfo is not timezone.utc:
        value = _utc(value)
    # isoformat() starts with YYYY-MM-DDTHH:MM:SS for every datetime.
    if value.microsecond:
        return f"{value.isoformat()[:19]}.{value.microsecond // 1000:03d}Z"
    return f"{value.isoformat()[:19]}Z"


@attrs.frozen
class Position:
    """
    One record: one fix or event of one device.

    @ivar time: the device's own time of the fix (UTC), or L{None} when the frame
        carries none; the gateway never invents one here.
    @ivar latitude: degrees WGS84, L{None} when the frame has no fix.
    @ivar valid: the device's own fix flag.
    @ivar alarm: names from L{ALARMS}.
    @ivar event: the vendor's event code or name.
    @ivar attributes: everything else, named per docs/records.md's vocabulary or
        C{<vendor>.<name>}; values must be JSON-serialisable.
    """

    time: Optional[datetime] = attrs.field(converter=_utc)
    latitude: Optional[float] = None
    longitude: Optional[float] = None
    valid: bool = False
    speed_kmh: Optional[float] = None
    course: Optional[float] = None
    altitude_m: Optional[float] = None
    alarm: Tuple[str, ...] = attrs.field(default=(), converter=_alarms)
    event: Optional[str] = None
    attributes: Mapping[str, Any] = attrs.field(factory=dict, eq=False)

    def to_json(self) -> dict:
        """
        The record as the JSON object of the decode contract.
        """
        return {
            "time": isoformat(self.time),
            "latitude": self.latitude,
            "longitude": self.longitude,
            "valid": self.valid,
            "speed_kmh": self.speed_kmh,
            "course": self.course,
            "altitude_m": self.altitude_m,
            "alarm": list(self.alarm),
            "event": self.event,
            "attributes": dict(self.attributes),
        }

    def fingerprint(self, attributes_json: Optional[str] = None) -> str:
        """
        A digest of everything the device said in this record.

        A device that did not get our ack sends the same record again; the store
        keeps one row per (device, fingerprint), while two different records that
        share a timestamp have different fingerprints and both stay.

        @param attributes_json: L{canonical_json} of the attributes, when the
            caller has it already.
        """
        if attributes_json is None:
            attributes_json = canonical_json(self.attributes)
        text = "|".join((isoformat(self.time) or "", repr(self.latitude), repr(self.longitude),
                         repr(self.valid), repr(self.speed_kmh), repr(self.course),
                         repr(self.altitude_m), ",".join(self.alarm), self.event or "",
                         attributes_json))
        return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def canonical_json(value) -> str:
    """
    JSON with sorted keys; values JSON cannot hold are written as text.
    """
    return _CANONICAL.encode(value)


# One encoder for every record: json.dumps with options builds a new one per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


@attrs.frozen
class Confirmation:
    """
    A device's answer to a command.

    @ivar token: what the device echoed that identifies the command (the token
        the encoder returned in L{EncodedCommand}), or L{None} when the reply
        cannot be told apart from other replies: then the oldest command sent to
        the device and not yet answered is the one answered.
    @ivar success: C{False} when the device refused or reported an error.
    @ivar reply: the device's reply, as text, kept with the command.
    @ivar command_type: the command type the reply is about, when the reply
        says, or a tuple of the types it may answer (an H02 C{S20} reply
        answers a stop or a resume); narrows the match.
    """

    token: Optional[str] = None
    success: bool = True
    reply: str = ""
    command_type: Optional[str] = None


@attrs.frozen
class DecodeResult:
    """
    What a decoder made of one frame.

    @ivar device_id: the device the frame names, if it names one.
    @ivar records: the records the frame holds, in the device's order.
    @ivar reply: bytes to send back once every record is stored (an ack), or
        C{b""} when the device expects nothing.
    @ivar confirmations: command replies found in the frame.
    @ivar settings: per-device settings learned from the frame (for example a
        report format the device announced); the gateway stores them with the
        device.
    @ivar withheld: why the records must not be stored, when they must not
        (e.g. a report before the device said who it is): they are shown by
        C{trackport decode} and logged, never stored, and no reply is sent.
    @ivar commands_wait: C{True} when the device sends data next and reads
        nothing but the reply to it until then (a login before its first
        report): commands for it wait until a later frame clears this.
    """

    device_id: Optional[str] = None
    records: Tuple[Position, ...] = attrs.field(default=(), converter=tuple)
    reply: bytes = b""
    confirmations: Tuple[Confirmation, ...] = attrs.field(default=(), converter=tuple)
    settings: Mapping[str, str] = attrs.field(factory=dict, eq=False)
    withheld: Optional[str] = None
    commands_wait: bool = False


@attrs.frozen
class Command:
    """
    A command for one device, as the operator queued it.
    """

    id: Optional[int]
    device_id: str
    type: str
    params: Mapping[str, str] = attrs.field(factory=dict, eq=False)


@attrs.frozen
class EncodedCommand:
    """
    The bytes for a command and how to recognise the device's answer.

    @ivar token: a value the device will echo in its confirmation (see
        L{Confirmation.token}), or L{None}.
    @ivar expects_reply: C{False} when the protocol has no confirmation for this
        command: the command is done once written.
    """

    data: bytes
    token: Optional[str] = None
    expects_reply: bool = True
