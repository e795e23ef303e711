# -*- test-case-name: tests.test_http -*-
"""
What C{/metrics} exposes (Prometheus text format, prometheus-client).

Counters move on the reactor thread as frames pass; gauges that describe
state (sessions, the writer's queue, the database) are read when scraped, so
they cost nothing between scrapes. Command states come from the database,
refreshed in the background, so a scrape never waits for it.
"""

from __future__ import annotations

from collections import Counter
from typing import Dict

from prometheus_client import CollectorRegistry, Counter as PromCounter, Histogram
from prometheus_client.core import GaugeMetricFamily

#: Ack latency buckets (seconds): a healthy gateway acks within tens of ms.
ACK_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Metrics:
    """
    The gateway's metrics, in a registry of their own.

    @ivar command_states: the latest count of commands per status.
    """

    def __init__(self, hub, store):
        self.hub = hub
        self.store = store
        self.registry = CollectorRegistry(auto_describe=True)
        self._frames = PromCounter("trackport_frames", "Frames decoded", ["protocol"],
                                   registry=self.registry)
        self._records = PromCounter("trackport_records", "Records handed to the store", ["protocol"],
                                    registry=self.registry)
        self._acks = Histogram("trackport_ack_latency_seconds",
                               "From a frame's arrival to its ack being written (records committed)",
                               ["protocol"], buckets=ACK_BUCKETS, registry=self.registry)
        self._unknown = PromCounter("trackport_unknown_traffic", "Sessions and datagrams no decoder recognised",
                                    registry=self.registry)
        self._batches = Histogram("trackport_writer_batch_records", "Records per committed transaction",
                                  buckets=BATCH_BUCKETS, registry=self.registry)
        self.command_states: Dict[str, int] = {}
        self.extra = []
        self.registry.register(_State(self))
        store.observe_batch = self._batches.observe

    # -- what the hub calls (reactor thread) -------------------------------

    def frame(self, protocol) -> None:
        self._frames.labels(protocol or "unknown").inc()

    def records(self, protocol, count: int) -> None:
        self._records.labels(protocol or "unknown").inc(count)

    def acked(self, protocol, seconds: float) -> None:
        self._acks.labels(protocol or "unknown").observe(max(0.0, seconds))

    def unknown(self) -> None:
        self._unknown.inc()

    # -- reading ---------------------------------------------------------------

    def snapshot(self) -> dict:
        """
        The figures the console's health view shows, from the same sources
        as C{/metrics}.
        """
        sessions = Counter((s.protocol or "unknown", s.transport) for s in self.hub.sessions.values())
        acks = {}
        for metric in self._acks.collect():
            total = sum(s.value for s in metric.samples if s.name.endswith("_count"))
            seconds = sum(s.value for s in metric.samples if s.name.endswith("_sum"))
            acks = {"count": total, "mean_seconds": seconds / total if total else None}
        records = sum(s.value for m in self._records.collect() for s in m.samples
                      if s.name.endswith("_total"))
        return {
            "sessions": [{"protocol": p, "transport": t, "count": n} for (p, t), n in sorted(sessions.items())],
            "records_total": records,
            "acks": acks,
            "writer_queue": self.store.pending,
            "database_up": bool(self.store.healthy),
            "commands": dict(self.command_states),
        }


class _State:
    """
    Gauges read from the gateway's state at scrape time.
    """

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        m = self.metrics
        sessions = GaugeMetricFamily("trackport_sessions", "Live device sessions",
                                     labels=["protocol", "transport"])
        counts = Counter((s.protocol or "unknown", s.transport) for s in m.hub.sessions.values())
        for (protocol, transport), n in sorted(counts.items()):
            sessions.add_metric([protocol, transport], n)
        yield sessions
        yield GaugeMetricFamily("trackport_writer_queue_records", "Records waiting for the database",
                                value=m.store.pending)
        yield GaugeMetricFamily("trackport_database_up", "1 while the database takes writes, 0 in an outage",
                                value=1 if m.store.healthy else 0)
        commands = GaugeMetricFamily("trackport_commands", "Commands by status", labels=["status"])
        for status, n in sorted(m.command_states.items()):
            commands.add_metric([status], n)
        yield commands
        for extra in m.extra:
            yield from extra()
