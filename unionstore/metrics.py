"""``/metrics`` in Prometheus text format.

The hot path only bumps plain counters (a dict update per request, no locks); everything is
turned into Prometheus families at scrape time by one collector. Sources are registered as
callables that return samples, so the caches, the limiters and the edge stay ignorant of
prometheus_client.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(slots=True)
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds


class RequestMetrics:
    """Counts and latency of S3 requests per operation and status."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self.latency: dict[str, _Histogram] = {}

    def observe(self, op: str, status: int, seconds: float) -> None:
        key = (op, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        hist = self.latency.get(op)
        if hist is None:
            hist = self.latency[op] = _Histogram()
        hist.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily(
            "unionstore_s3_requests", "S3 requests by operation and status", labels=["op", "status"]
        )
        for (op, status), n in sorted(self.counts.items()):
            counter.add_metric([op, str(status)], n)
        yield counter
        hist = HistogramMetricFamily(
            "unionstore_s3_request_seconds", "S3 request latency by operation", labels=["op"]
        )
        for op, h in sorted(self.latency.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), h.counts, strict=True):
                cumulative += n
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            hist.add_metric([op], buckets, h.total)
        yield hist


Sample = tuple[str, str, str, dict[str, str], float]  # kind, name, help, labels, value
Source = Callable[[], Iterable[Sample]]


class Registry:
    """Holds the request metrics and the pull sources; renders the text format."""

    def __init__(self) -> None:
        self.requests = RequestMetrics()
        self.sources: list[Source] = []
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def add_source(self, source: Source) -> None:
        self.sources.append(source)

    def collect(self) -> Iterator[Metric]:
        yield from self.requests.collect()
        families: dict[str, Metric] = {}
        for source in self.sources:
            for kind, name, help_text, labels, value in source():
                family = families.get(name)
                if family is None:
                    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                    family = families[name] = cls(name, help_text, labels=list(labels))
                family.add_metric(list(labels.values()), value)  # type: ignore[attr-defined]
        yield from families.values()

    def render(self) -> bytes:
        return bytes(generate_latest(self._registry))
