# -*- test-case-name: tests.test_session -*-
"""
Where sessions meet the rest of the gateway: the detector, the store, per-device
settings and the command queue.

The server and C{trackport decode} build the same L{Hub}; only the store behind
it differs (the database, or memory).
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gateway.detector import Detector
from gateway.hexdump import hexdump

log = Logger()

#: Unrecognised sessions logged and kept per second: a port scan or a UDP flood
#: of garbage must not fill the log and the C{unknown_frames} table.
UNKNOWN_PER_SECOND = 20


class Hub:
    """
    @ivar sessions: the live session of each identified device.
    @ivar commands: the L{gateway.commands.CommandQueue}, or L{None} when
        commands are not delivered (C{trackport decode}).
    """

    def __init__(self, decoders: Mapping[str, object], store, clock, settings=None):
        self.decoders = dict(decoders)
        self.detector = Detector(self.decoders.values())
        self.store_ = store
        self.clock = clock
        self._settings = settings if settings is not None else {}
        self.sessions: Dict[str, object] = {}
        self.commands = None
        self.errors = []
        self.keep_errors = False
        self._unknown_second = None
        self._unknown_count = 0
        self._unknown_dropped = 0

    # -- what sessions call ----------------------------------------------

    def settings(self, device_id: Optional[str]) -> Mapping[str, str]:
        """
        A device's settings over the base settings (C{decode --set}): what a
        device learned in band adds to what the operator gave, never hides it.
        """
        base = self._settings.get(None)
        own = self._settings.get(device_id) if device_id is not None else None
        if not base:
            return own or {}
        if not own:
            return base
        return {**base, **own}

    def store(self, session, device_id: Optional[str], records) -> Deferred:
        """
        Hand records to the store; the L{Deferred} fires once they committed.
        """
        return self.store_.submit(device_id, session.protocol, session.peer, records)

    def unknown(self, session, data: bytes) -> None:
        second = int(self.clock.seconds())
        if second != self._unknown_second:
            if self._unknown_dropped:
                log.warn("{n} more unrecognised sessions/datagrams not logged nor kept",
                         n=self._unknown_dropped)
            self._unknown_second, self._unknown_count, self._unknown_dropped = second, 0, 0
        if self._unknown_count >= UNKNOWN_PER_SECOND:
            self._unknown_dropped += 1
            return
        self._unknown_count += 1
        self.error(session, f"no decoder recognises the data: {hexdump(data)}")
        self.store_.unknown(session.transport, session.peer, data)

    def identified(self, session, previous: Optional[str]) -> None:
        if previous is not None and self.sessions.get(previous) is session:
            del self.sessions[previous]
        self.sessions[session.device_id] = session
        if self.commands is not None:
            self.commands.device_online(session)

    def frame_done(self, session, device_id: Optional[str]) -> None:
        if device_id is None:
            return
        self.store_.touch(device_id, session.protocol, session.transport, session.peer)
        if session.transport == "udp":
            # A UDP device is reachable right after it spoke (NAT mappings are
            # short-lived): make its peer address the current one.
            if self.sessions.get(device_id) is not session:
                self.sessions[device_id] = session
                if self.commands is not None:
                    self.commands.device_online(session)
            elif self.commands is not None:
                self.commands.device_active(session)

    def learned(self, device_id: str, settings: Mapping[str, str]) -> None:
        if all(self.settings(device_id).get(k) == v for k, v in settings.items()):
            return
        current = dict(self._settings.get(device_id, {}))
        current.update(settings)
        self._settings[device_id] = current
        self.store_.learn(device_id, dict(settings))

    def confirmed(self, session, device_id, confirmations) -> None:
        if self.commands is not None and device_id is not None:
            self.commands.confirmed(device_id, confirmations)

    def session_closed(self, session) -> None:
        if session.transport != "udp":
            log.info("session {transport} {peer} closed ({protocol}, device {device_id})",
                     transport=session.transport, peer=session.peer,
                     protocol=session.protocol, device_id=session.device_id)
        if session.device_id is not None and self.sessions.get(session.device_id) is session:
            del self.sessions[session.device_id]

    def error(self, session, text: str, log_it: bool = True) -> None:
        if log_it:
            log.error("{transport} {peer} ({protocol}, device {device_id}): {text}",
                      transport=session.transport, peer=session.peer,
                      protocol=session.protocol, device_id=session.device_id, text=text)
        if self.keep_errors:
            self.errors.append(text)

    # -- settings ---------------------------------------------------------

    def set_settings(self, device_id: str, settings: Mapping[str, str]) -> None:
        """
        Replace a device's settings as the operator configured them.
        """
        self._settings[device_id] = dict(settings)


class MemoryStore:
    """
    A store that keeps records in memory and commits at once: what
    C{trackport decode} and unit tests run the session path against.
    """

    def __init__(self):
        self.records = []
        self.unknown_frames = []
        self.learned = {}
        self.seen = {}

    def submit(self, device_id, protocol, peer, records) -> Deferred:
        self.records.extend((device_id, protocol, r) for r in records)
        return succeed(None)

    def unknown(self, transport, peer, data) -> None:
        self.unknown_frames.append((transport, peer, data))

    def touch(self, device_id, protocol, transport, peer) -> None:
        self.seen[device_id] = (protocol, transport, peer)

    def learn(self, device_id, settings) -> None:
        self.learned.setdefault(device_id, {}).update(settings)
