"""
L{gateway.ratelog.Budget}: a bounded number of lines a period, and a summary
that a timer writes (no later event is needed for it).
"""

from twisted.internet.task import Clock

from gateway.ratelog import Budget


def test_limit_then_counted_and_summarised_by_the_timer():
    clock, summaries = Clock(), []
    budget = Budget(clock, 3, 10.0, summaries.append)
    assert [budget.allow() for _ in range(10)] == [True] * 3 + [False] * 7
    assert summaries == []
    clock.advance(10)
    assert summaries == [7]
    assert clock.getDelayedCalls() == []  # quiet now: no timer left
    assert budget.allow()


def test_no_summary_when_nothing_was_dropped():
    clock, summaries = Clock(), []
    budget = Budget(clock, 3, 10.0, summaries.append)
    budget.allow()
    clock.advance(10)
    assert summaries == []


def test_flush_reports_at_once():
    clock, summaries = Clock(), []
    budget = Budget(clock, 1, 10.0, summaries.append)
    budget.allow(), budget.allow()
    budget.flush()
    assert summaries == [1] and clock.getDelayedCalls() == []
