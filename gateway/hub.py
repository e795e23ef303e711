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
from twisted.python.failure import Failure

from gateway.detector import Detector
from gateway.hexdump import hexdump, printable
from gateway.ratelog import Budget
from gateway.identity import WINDOW, Claims

log = Logger()

#: Unrecognised sessions logged and kept per second: a port scan or a UDP flood
#: of garbage must not fill the log and the C{unknown_frames} table.
UNKNOWN_PER_SECOND = 20
#: Seconds between a session's last-seen notes to the store (which writes them
#: once a second at most); a new device or protocol is noted at once.
TOUCH_INTERVAL = 1.0


class Hub:
    """
    @ivar sessions: the live session of each identified device (the holder of
        its claims, L{gateway.identity}).
    @ivar claims: the L{gateway.identity.Claims} of open sessions on device ids.
    @ivar conflicts: device ids two sessions claim at once, with both peers.
    @ivar commands: the L{gateway.commands.CommandQueue}, or L{None} when
        commands are not delivered (C{trackport decode}).
    @ivar known: the device ids an operator added; with C{known_only}, frames
        of any other device are kept as unknown traffic, not stored nor acked.
    """

    def __init__(self, decoders: Mapping[str, object], store, clock, settings=None,
                 claim_window: float = WINDOW, known_only: bool = False):
        self.decoders = dict(decoders)
        self.claims = Claims(clock, claim_window)
        self.conflicts: Dict[str, str] = {}
        self.known_only = known_only
        self.known: set = set()
        self.stopping = False
        self.detector = Detector(self.decoders.values(), clock)
        self.store_ = store
        self.clock = clock
        # Made once and shared by every session's context (a bound method
        # made per session would cost each idle one 64 bytes).
        self.lookup = self.settings
        self.seconds = clock.seconds
        self._settings = settings if settings is not None else {}
        self.sessions: Dict[str, object] = {}
        self.commands = None
        #: Callables C{(event, session)} told when a device comes online
        #: (C{"online"}: a session holds it) or goes offline.
        self.watchers = []
        #: Per device id, callables C{(direction, data, session)} that see its
        #: frames and the bytes sent to it (C{"in"}/C{"out"}), for field debugging.
        self.taps: Dict[str, list] = {}
        #: The L{gateway.http.metrics.Metrics} when metrics are served.
        self.metrics = None
        self.errors = []
        self.keep_errors = False
        self._unknown = Budget(clock, UNKNOWN_PER_SECOND, 1.0, lambda n: log.warn(
            "{n} more unrecognised sessions/datagrams not logged nor kept", n=n))

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

    def store(self, session, device_id: Optional[str], records, frame: bytes, done) -> None:
        """
        Hand records to the store; C{done(None)} is called once they committed
        (or, refused by the database, were kept raw with C{frame}), or
        C{done(exception)} when they were not stored.
        """
        if self.metrics is not None:
            self.metrics.records(session.protocol, len(records))
        pending = self.store_.submit(device_id, session.protocol, session.peer, records,
                                     frame=frame, transport=session.transport, done=done)
        if pending is not None:
            # A store that answers with a Deferred (tests' stand-ins).
            pending.addCallbacks(lambda _: done(None), lambda failure: done(failure.value))

    def withheld(self, session, records) -> None:
        """
        Records a decoder read but that must not be stored (see
        L{gateway.model.DecodeResult.withheld}): only a store that shows
        what was decoded (L{MemoryStore}) keeps them.
        """
        show = getattr(self.store_, "withhold", None)
        if show is not None and records:
            show(session.protocol, records)

    def tap(self, session, direction: str, data: bytes) -> None:
        """
        Show C{data} to whoever watches C{session}'s device (see L{taps}).
        """
        for watcher in self.taps.get(session.device_id, ()):
            watcher(direction, data, session)

    def acked(self, session, seconds: float) -> None:
        """
        An ack left, C{seconds} after its frame arrived.
        """
        if self.metrics is not None:
            self.metrics.acked(session.protocol, seconds)

    def _tell(self, event: str, session) -> None:
        for watcher in self.watchers:
            watcher(event, session)

    def not_an_id(self, session, claimed: str, frame: bytes) -> Deferred:
        """
        A frame naming something that is not a device id: logged escaped and
        kept raw with the reason; the L{Deferred} fires once it is kept.
        """
        reason = f"not a device id: {printable(claimed, 100)}"
        self.error(session, f"{reason}; frame kept raw in rejected_records: {hexdump(frame)}")
        return self.store_.reject("device_id", reason, session.transport, session.peer,
                                  session.protocol, claimed, frame)

    def unknown(self, session, data: bytes, why: Optional[str] = None) -> None:
        """
        A session or datagram no decoder recognises (or, with C{why}, that
        never said anything): logged and kept within L{UNKNOWN_PER_SECOND}.
        """
        if self.metrics is not None:
            self.metrics.unknown()
        if not self._unknown.allow():
            return
        self.error(session, why or f"no decoder recognises the data: {hexdump(data)}")
        if data:
            self.store_.unknown(session.transport, session.peer, data)

    def admits(self, device_id: Optional[str]) -> bool:
        """
        Whether frames of C{device_id} are stored and acked.
        """
        return not self.known_only or (device_id is not None and device_id in self.known)

    def refused(self, session, device_id: Optional[str], data: bytes) -> None:
        """
        A frame of a device not admitted: kept as unknown traffic with its bytes.
        """
        if not self._unknown.allow():
            return
        reason = (f"device {printable(device_id)} not known (--devices known)" if device_id
                  else "names no device (--devices known)")
        self.error(session, f"{reason}, not stored nor acked: {hexdump(data)}")
        self.store_.unknown(session.transport, session.peer, data, reason)

    def identified(self, session, previous: Optional[str]) -> None:
        if previous is not None:
            self.claims.release_device(session, previous)
            self._rehome(previous, session)
        self._claim(session, session.device_id)

    def frame_done(self, session, device_id: Optional[str]) -> None:
        if self.metrics is not None:
            self.metrics.frame(session.protocol)
        if device_id is None:
            return
        if session.last_seen - session.touched >= TOUCH_INTERVAL:
            # Last-seen times are written once a second at most: telling the
            # store on every frame of a busy session would only cost.
            session.touched = session.last_seen
            self.store_.touch(device_id, session.protocol, session.transport, session.peer)
        self._claim(session, device_id)

    def _claim(self, session, device_id: str) -> None:
        # Every frame naming a device is a claim; a UDP device is reachable
        # right after it spoke (NAT mappings are short-lived), a TCP device
        # on the connection that spoke last.
        if self.claims.claim(session, device_id) == 1 and self.sessions.get(device_id) is session:
            # The common case, once per frame: the one session of the device.
            if self.commands is not None:
                self.commands.device_active(device_id)
            return
        holder = self.claims.holder(device_id)
        moved = self.sessions.get(device_id) is not holder
        self.sessions[device_id] = holder
        if moved:
            self._tell("online", holder)
        if device_id not in self.conflicts:
            pair = self.claims.conflict(device_id)
            if pair is not None:
                a, b = pair
                text = f"{a.transport} {a.peer} and {b.transport} {b.peer}"
                self.conflicts[device_id] = text
                log.warn("identity conflict: device {device_id} claimed by {peers} at once;"
                         " its commands wait", device_id=printable(device_id), peers=text)
                if self.commands is not None:
                    self.commands.conflict(device_id, text)
        if self.commands is not None:
            if moved:
                self.commands.device_online(device_id)
            else:
                self.commands.device_active(device_id)

    def review(self) -> None:
        """
        End the conflicts whose claims have aged out of the window (called
        periodically by the command queue).
        """
        for device_id in [d for d in self.conflicts if self.claims.conflict(d) is None]:
            del self.conflicts[device_id]
            log.info("identity conflict over: device {device_id} held by {peer}",
                     device_id=printable(device_id),
                     peer=getattr(self.claims.holder(device_id), "peer", "nobody"))
            if self.commands is not None:
                self.commands.conflict(device_id, None)

    def _rehome(self, device_id: str, gone) -> None:
        # A session stopped speaking for a device (closed, or now names
        # another device): the device's queued commands follow the next open
        # session claiming it, if there is one, and so do the commands written
        # on the gone session and not yet answered (no reply can come there).
        holder = self.claims.holder(device_id)
        if holder is None:
            if self.sessions.get(device_id) is gone:
                del self.sessions[device_id]
                self._tell("offline", gone)
            return
        if self.sessions.get(device_id) is not holder:
            # Not when the gone session was not the holder (a UDP peer a NAT
            # left behind): the device did not come online again.
            self.sessions[device_id] = holder
            self._tell("online", holder)
        if self.commands is not None and not self.stopping:
            self.commands.moved(device_id, gone, holder)

    def learned(self, device_id: str, settings: Mapping[str, str]) -> None:
        if all(self.settings(device_id).get(k) == v for k, v in settings.items()):
            return
        current = dict(self._settings.get(device_id, {}))
        current.update(settings)
        self._settings[device_id] = current
        self.store_.learn(device_id, dict(settings))

    def confirmed(self, session, device_id, confirmations) -> None:
        if self.commands is not None and device_id is not None:
            self.commands.confirmed(session, device_id, confirmations)

    def session_closed(self, session) -> None:
        # An unrecognised session was logged (within its budget) already: a
        # flood of connections must not write two lines each.
        if session.decoder is not None and session.transport != "udp":
            log.info("session {transport} {peer} closed ({protocol}, device {device_id})",
                     transport=session.transport, peer=session.peer, protocol=session.protocol,
                     device_id=printable(session.device_id))
        self.claims.release(session)
        if session.device_id is not None:
            self._rehome(session.device_id, session)

    def error(self, session, text: str, log_it: bool = True, failure: bool = False) -> None:
        """
        Bad input from C{session}; C{failure}: a decoder bug, whose traceback
        (the exception being handled) is logged too. Everything that may come
        from the device is escaped.
        """
        if log_it:
            line = printable(text, 1000)
            if failure:
                line += "\n" + "\n".join(printable(t, 500)
                                          for t in Failure().getTraceback().splitlines())
            log.error("{transport} {peer} ({protocol}, device {device_id}): {text}",
                      transport=session.transport, peer=printable(session.peer),
                      protocol=session.protocol, device_id=printable(session.device_id), text=line)
        if self.keep_errors:
            self.errors.append(text)

    def suppressed(self, session, count: int, period: float) -> None:
        log.warn("{transport} {peer} ({protocol}, device {device_id}): {count} more errors in"
                 " {period:g} s not logged", transport=session.transport, peer=printable(session.peer),
                 protocol=session.protocol, device_id=printable(session.device_id), count=count,
                 period=period)

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
        self.decoded = []
        self.unknown_frames = []
        self.learned = {}
        self.seen = {}
        self.rejected = []

    def submit(self, device_id, protocol, peer, records, done=None, **kw) -> Optional[Deferred]:
        self.records.extend((device_id, protocol, r) for r in records)
        self.decoded.extend((device_id, protocol, r) for r in records)
        if done is not None:
            done(None)
            return None
        return succeed(None)

    def withhold(self, protocol, records) -> None:
        """
        Records decoded but not stored: listed in L{decoded} only.
        """
        self.decoded.extend((None, protocol, r) for r in records)

    def reject(self, kind, reason, transport=None, peer=None, protocol=None, device_id=None,
               frame=b"", detail=None) -> Deferred:
        self.rejected.append((kind, reason, device_id, bytes(frame)))
        return succeed(None)

    def unknown(self, transport, peer, data, reason=None) -> None:
        self.unknown_frames.append((transport, peer, data))

    def touch(self, device_id, protocol, transport, peer) -> None:
        self.seen[device_id] = (protocol, transport, peer)

    def learn(self, device_id, settings) -> None:
        self.learned.setdefault(device_id, {}).update(settings)
