# -*- test-case-name: tests.test_ratelog -*-
"""
A bound on how often something may be logged: a device that sends garbage
must not turn every bad byte into a log line.
"""

from __future__ import annotations

from typing import Callable


class Budget:
    """
    Lets through C{limit} events every C{period} seconds. The rest are counted,
    and C{summary(count)} is called once when the period ends (by a timer: the
    summary never waits for the next event, which may never come).

    Nothing runs while no event happens: a quiet session costs no timer.
    """

    __slots__ = ("clock", "limit", "period", "_summary", "_count", "_dropped", "_timer")

    def __init__(self, clock, limit: int, period: float, summary: Callable[[int], None]):
        self.clock = clock
        self.limit = limit
        self.period = period
        self._summary = summary
        self._count = 0
        self._dropped = 0
        self._timer = None

    def allow(self) -> bool:
        """
        C{True} when this event may be logged; C{False} when it is only counted.
        """
        if self._timer is None:
            self._count, self._dropped = 0, 0
            self._timer = self.clock.callLater(self.period, self._end)
        if self._count < self.limit:
            self._count += 1
            return True
        self._dropped += 1
        return False

    def flush(self) -> None:
        """
        End the period now (the session is closing): report what was counted.
        """
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._end()

    def _end(self) -> None:
        self._timer = None
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            self._summary(dropped)
