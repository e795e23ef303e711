# -*- test-case-name: tests.test_session -*-
"""
What a decoder may know about the session a frame came from.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable, Dict, Mapping, Optional

import attrs


def _no_settings(device_id: Optional[str]) -> Mapping[str, str]:
    return {}


@attrs.define
class Context:
    """
    The session as a decoder sees it.

    @ivar transport: C{'tcp'} or C{'udp'}.
    @ivar peer: the remote address, for messages.
    @ivar device_id: the device this session is bound to, once a frame named it.
    @ivar state: scratch space for the decoder, kept for the life of the session
        (a login's identity, a report format learned in band).
    @ivar lookup: maps a device id to its per-device settings (see
        C{trackport configure} and C{decode --set}).
    @ivar seconds: the injected clock (C{reactor.seconds} in service, a
        L{twisted.internet.task.Clock} in tests).
    """

    transport: str = "tcp"
    peer: str = "-"
    device_id: Optional[str] = None
    state: Dict[str, Any] = attrs.field(factory=dict)
    lookup: Callable[[Optional[str]], Mapping[str, str]] = _no_settings
    seconds: Callable[[], float] = attrs.field(default=None)

    def settings(self, device_id: Optional[str] = None) -> Mapping[str, str]:
        """
        Settings of C{device_id}, or of the session's device.
        """
        return self.lookup(device_id or self.device_id)

    def setting(self, key: str, default: Optional[str] = None,
                device_id: Optional[str] = None) -> Optional[str]:
        return self.settings(device_id).get(key, default)

    def now(self) -> datetime:
        """
        The current time, from the injected clock.
        """
        if self.seconds is None:
            raise RuntimeError("this context has no clock")
        return datetime.fromtimestamp(self.seconds(), tz=timezone.utc)
