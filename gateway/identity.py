# -*- test-case-name: tests.test_identity -*-
"""
Which session speaks for a device, and when that is in doubt.

Tracker protocols authenticate nothing: a device is whoever sends its id. A
command must therefore go to the session the device really uses, and an
engine stop must go to no session at all while two of them claim the device.

Every frame that names a device is a claim by its session; L{Claims} keeps,
per device, when each open session first and last claimed it. With C{W} the
claim window (L{WINDOW} seconds by default):

  - B{holder}: the open session that claimed the device last; commands go
    there.
  - B{conflict}: two open sessions from different peers each claimed the
    device within the last C{W} seconds, and the older one claimed it again
    after the newer one first did. Two devices (or a device and an impostor)
    are speaking at once: every command of the device waits.
  - B{settling}: the holder took over from another open session that claimed
    the device within C{W} seconds before the takeover and has been silent
    since. That is most often a reconnect whose old connection is not closed
    yet, but could be an impostor speaking between two keep-alives of the
    real device: engine stop, engine resume and custom commands wait until
    the old session has been silent for C{W} seconds (or closes); other
    commands go to the new session at once.

A reconnect whose old connection closed, or was silent for C{W} seconds, is
neither: everything goes to the new connection at once.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Dict, Optional, Set

import attrs

from gateway.hexdump import printable

#: Seconds a claim counts: longer than the keep-alive interval of the devices
#: served, so that a real device still speaking is noticed.
WINDOW = 120.0

#: Sessions remembered per device id.
MAX_CLAIMANTS = 16

#: Commands that wait while the holder is settling: what must not reach an
#: impostor (a custom command may be an engine stop; the gateway does not
#: guess).
SENSITIVE = frozenset({"engine_stop", "engine_resume", "custom"})


@attrs.frozen
class Route:
    """
    Where a device's commands may go now.

    @ivar session: the holder, or L{None} when no open session claims the device.
    @ivar hold: why every command waits (a conflict), or L{None}.
    @ivar hold_sensitive: why L{SENSITIVE} commands wait (settling), or L{None}.
    """

    session: object = None
    hold: Optional[str] = None
    hold_sensitive: Optional[str] = None

    def reason(self, command_type: str) -> Optional[str]:
        if self.hold:
            return self.hold
        if command_type in SENSITIVE:
            return self.hold_sensitive
        return None


class _Claim:
    __slots__ = ("first", "last", "session")

    def __init__(self, when: float, session):
        self.first = self.last = when
        self.session = session


class _Claims(dict):
    """
    The claims of several sessions on one device, by session, in the order
    they began.

    @ivar apart: C{True} when no two of them overlap in time: each began after
        every earlier one last claimed (a device behind a NAT that sends every
        frame from a new port, a reconnect). They are then in time order, the
        last open one holds the device and there is no conflict, which the
        answers below take without comparing claims. C{False} when they may
        overlap: the answers compare them all.
    @ivar latest: the latest time one of them claimed the device, or later.
    @ivar newest: when the newest of them began, or later.
    """

    __slots__ = ("apart", "latest", "newest")

    def __init__(self, claim: _Claim):
        super().__init__(((claim.session, claim),))
        # A claim renewed after the clock stepped back may end before it began.
        self.apart = claim.first <= claim.last
        self.latest = max(claim.first, claim.last)
        self.newest = claim.first

    def recheck(self) -> None:
        """
        Whether they are apart, after one was forgotten.
        """
        apart, latest, newest = True, _NEVER, _NEVER
        for claim in self.values():
            if claim.first <= latest or claim.last < claim.first:
                apart = False
            latest, newest = max(latest, claim.first, claim.last), max(newest, claim.first)
        self.apart, self.latest, self.newest = apart, latest, newest


_NEVER = float("-inf")


class Claims:
    """
    The claims of open sessions on device ids.
    """

    def __init__(self, clock, window: float = WINDOW):
        self.clock = clock
        self.window = window
        #: Per device id, its one claim, or a dict of claims by session when
        #: several sessions claim it (a dict per device would cost every idle
        #: session a few hundred bytes).
        self._claims: Dict[str, object] = {}
        #: The device id a session claims, or the set of them when it claims
        #: several (rare; a set per session would cost every idle session).
        self._devices: Dict[object, object] = {}

    def _claimants(self, device_id: str) -> Dict[object, _Claim]:
        entry = self._claims.get(device_id)
        if entry is None:
            return {}
        return {entry.session: entry} if type(entry) is _Claim else entry

    def _held(self, session) -> Set[str]:
        held = self._devices.get(session)
        return set() if held is None else {held} if type(held) is str else held

    def _forget(self, session, device_id: str) -> None:
        held = self._devices.get(session)
        if held == device_id:
            del self._devices[session]
        elif type(held) is set:
            held.discard(device_id)

    def claim(self, session, device_id: str) -> int:
        """
        Note a frame of C{session} naming C{device_id}; returns how many
        sessions claim the device.
        """
        now = self.clock.seconds()
        entry = self._claims.get(device_id)
        if type(entry) is _Claim:
            if entry.session is session:
                entry.last = now
                return 1
            entry = self._claims[device_id] = _Claims(entry)
        elif entry is None:
            self._claims[device_id] = _Claim(now, session)
            self._hold(session, device_id)
            return 1
        claims = entry
        claim = claims.get(session)
        if claim is None:
            if len(claims) >= MAX_CLAIMANTS:
                # Many peers naming one id: forget the one silent longest, so
                # that a flood of spoofed sources costs bounded work per frame
                # (claims apart in time: the first, which ended first).
                stale = next(iter(claims)) if claims.apart else min(claims, key=lambda s: claims[s].last)
                del claims[stale]
                self._forget(stale, device_id)
                if not claims.apart:
                    claims.recheck()
            if now <= claims.latest:
                # It begins while another may still be going.
                claims.apart = False
            claims[session] = _Claim(now, session)
            claims.newest = max(claims.newest, now)
            self._hold(session, device_id)
        else:
            if claims.newest > claim.last or now < claim.last:
                # Another began since this one last claimed (or the clock
                # went back): they may overlap now.
                claims.apart = False
            claim.last = now
        claims.latest = max(claims.latest, now)
        return len(claims)

    def _hold(self, session, device_id: str) -> None:
        held = self._devices.get(session)
        if held is None:
            self._devices[session] = device_id
        elif type(held) is str:
            if held != device_id:
                self._devices[session] = {held, device_id}
        else:
            held.add(device_id)

    def release(self, session) -> None:
        """
        Forget a closed session's claims.
        """
        for device_id in self._held(session):
            self._drop(session, device_id)
        self._devices.pop(session, None)

    def release_device(self, session, device_id: str) -> None:
        """
        Forget one claim: the session now speaks for another device.
        """
        self._forget(session, device_id)
        self._drop(session, device_id)

    def _drop(self, session, device_id: str) -> None:
        entry = self._claims.get(device_id)
        if type(entry) is _Claim:
            if entry.session is session:
                del self._claims[device_id]
        elif entry and entry.pop(session, None) is not None:
            if len(entry) == 1:
                (self._claims[device_id],) = entry.values()
            elif not entry.apart:
                entry.recheck()

    def holder(self, device_id: str):
        entry = self._claims.get(device_id)
        if entry is None:
            return None
        if type(entry) is _Claim:
            return entry.session if entry.session.open else None
        if entry.apart:
            # In time order: the last open one claimed last.
            for session in reversed(entry):
                if session.open:
                    return session
            return None
        live = [(c.last, c.first, s) for s, c in entry.items() if s.open]
        return max(live, key=lambda t: (t[0], t[1]))[2] if live else None

    def superseded(self, session, device_id: str) -> bool:
        """
        Whether C{session}'s claim on C{device_id} counts in no answer any
        more: another open session holds the device, and this claim is older
        than the window or was forgotten (L{MAX_CLAIMANTS}). Closing such a
        session changes no holder, conflict or route.
        """
        holder = self.holder(device_id)
        if holder is None or holder is session:
            return False
        entry = self._claims.get(device_id)
        claim = entry.get(session) if type(entry) is _Claims else None
        return claim is None or self.clock.seconds() - claim.last > self.window

    def conflict(self, device_id: str):
        """
        The two sessions in conflict over C{device_id} (older first), or L{None}.
        """
        entry = self._claims.get(device_id)
        if type(entry) is not _Claims or entry.apart:
            # One claim, or none overlapping another: no pair can be in conflict.
            return None
        now = self.clock.seconds()
        active = sorted(((c.first, c.last, s) for s, c in self._claimants(device_id).items()
                         if s.open and now - c.last <= self.window), key=lambda t: t[0])
        for i, (first_a, last_a, a) in enumerate(active):
            for j in range(i + 1, len(active)):
                first_b, _, b = active[j]
                if first_b > last_a:
                    # Later ones started later still: a device whose every
                    # frame comes from a new port (a NAT) costs one look, not
                    # one per pair of its sessions.
                    break
                if a.peer != b.peer:
                    return a, b
        return None

    def route(self, device_id: str) -> Route:
        holder = self.holder(device_id)
        if holder is None:
            return Route()
        pair = self.conflict(device_id)
        if pair is not None:
            a, b = pair
            return Route(holder, hold=f"identity conflict: {printable(device_id)} claimed by {a.transport} "
                                      f"{a.peer} and {b.transport} {b.peer}")
        now = self.clock.seconds()
        claims = self._claimants(device_id)
        mine = claims[holder]
        for session, claim in claims.items():
            if session is holder or not session.open or session.peer == holder.peer:
                continue
            if claim.last < mine.first and now - claim.last <= self.window:
                until = datetime.fromtimestamp(claim.last + self.window, timezone.utc)
                return Route(holder, hold_sensitive=(
                    f"identity settling: {printable(device_id)} moved from {session.transport} "
                    f"{session.peer} to {holder.transport} {holder.peer}; engine and custom "
                    f"commands wait until {until:%H:%M:%S}Z unless the old session speaks again"))
        return Route(holder)
