"""Prometheus metrics of one replica, kept in plain Python objects (no locks: everything
is updated from the event loop) and written in the Prometheus text exposition format
(https://prometheus.io/docs/instrumenting/exposition_formats/).

Series (``route`` is the handler path):

- ``neocloud_requests_total{route,status}`` counter;
- ``neocloud_request_duration_seconds{route}`` histogram (time to the full response or,
  for streams, to the end of the stream);
- ``neocloud_requests_in_flight`` gauge;
- ``neocloud_batch_size{route}`` histogram (items per batch call);
- ``neocloud_batch_duration_seconds{route}`` histogram (one batch call);
- ``neocloud_queue_wait_seconds{route}`` histogram (queue time of each batched item);
- ``neocloud_ready`` gauge (1 after setup, 0 while loading or draining);
- ``neocloud_tokens_total{route,kind}`` counter (``prompt`` / ``completion`` tokens).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    parts = []
    for n, v in zip(names, values, strict=True):
        esc = v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        parts.append(f'{n}="{esc}"')
    return "{" + ",".join(parts) + "}"


class _HistogramChild:
    __slots__ = ("counts", "sum", "count")

    def __init__(self, n: int) -> None:
        self.counts = [0] * (n + 1)
        self.sum = 0.0
        self.count = 0


class Histogram:
    """A labelled histogram; ``observe(value, *label_values)``."""

    def __init__(self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]):
        self.name, self.doc, self.labels = name, doc, tuple(labels)
        self.buckets = tuple(buckets)
        self.children: dict[tuple[str, ...], _HistogramChild] = {}

    def observe(self, value: float, *label_values: str) -> None:
        child = self.children.get(label_values)
        if child is None:
            child = self.children[label_values] = _HistogramChild(len(self.buckets))
        child.counts[bisect_left(self.buckets, value)] += 1
        child.sum += value
        child.count += 1

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} histogram"]
        for lv, child in sorted(self.children.items()):
            acc = 0
            for bound, n in zip(self.buckets, child.counts, strict=False):
                acc += n
                lab = _labels((*self.labels, "le"), (*lv, _num(bound)))
                out.append(f"{self.name}_bucket{lab} {acc}")
            lab = _labels((*self.labels, "le"), (*lv, "+Inf"))
            out.append(f"{self.name}_bucket{lab} {child.count}")
            base = _labels(self.labels, lv)
            out.append(f"{self.name}_sum{base} {_num(child.sum)}")
            out.append(f"{self.name}_count{base} {child.count}")
        return out


class Counter:
    """A labelled counter; ``inc(amount, *label_values)``."""

    def __init__(self, name: str, doc: str, labels: Sequence[str]):
        self.name, self.doc, self.labels = name, doc, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float, *label_values: str) -> None:
        self.values[label_values] = self.values.get(label_values, 0.0) + amount

    def get(self, *label_values: str) -> float:
        return self.values.get(label_values, 0.0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} counter"]
        for lv, v in sorted(self.values.items()):
            out.append(f"{self.name}{_labels(self.labels, lv)} {_num(v)}")
        return out


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class ServingMetrics:
    """All series of one replica (see the module docstring)."""

    def __init__(self) -> None:
        self.requests = Counter("neocloud_requests_total", "HTTP requests served.",
                                ("route", "status"))
        self.latency = Histogram("neocloud_request_duration_seconds",
                                 "Request duration in seconds.", ("route",), LATENCY_BUCKETS)
        self.batch_size = Histogram("neocloud_batch_size", "Items per batch call.",
                                    ("route",), BATCH_BUCKETS)
        self.batch_duration = Histogram("neocloud_batch_duration_seconds",
                                        "Duration of one batch call in seconds.", ("route",),
                                        LATENCY_BUCKETS)
        self.queue_wait = Histogram("neocloud_queue_wait_seconds",
                                    "Time a batched item waited in the queue, in seconds.",
                                    ("route",), LATENCY_BUCKETS)
        self.tokens = Counter("neocloud_tokens_total", "Tokens read (prompt) and generated "
                              "(completion).", ("route", "kind"))
        self.in_flight = 0
        self.ready = False

    def observer(self, route: str) -> _BatchObserver:
        """A batch observer that records under ``route``."""
        return _BatchObserver(self, route)

    def render(self) -> bytes:
        """The exposition text (``text/plain; version=0.0.4``)."""
        lines = [
            "# HELP neocloud_requests_in_flight Requests being served now.",
            "# TYPE neocloud_requests_in_flight gauge",
            f"neocloud_requests_in_flight {self.in_flight}",
            "# HELP neocloud_ready 1 when the replica takes traffic.",
            "# TYPE neocloud_ready gauge",
            f"neocloud_ready {1 if self.ready else 0}",
        ]
        for m in (self.requests, self.latency, self.batch_size, self.batch_duration,
                  self.queue_wait, self.tokens):
            lines.extend(m.render())
        return ("\n".join(lines) + "\n").encode()


class _BatchObserver:
    __slots__ = ("m", "route")

    def __init__(self, m: ServingMetrics, route: str) -> None:
        self.m, self.route = m, route

    def batch(self, size: int, seconds: float) -> None:
        self.m.batch_size.observe(size, self.route)
        self.m.batch_duration.observe(seconds, self.route)

    def queue_wait(self, seconds: float) -> None:
        self.m.queue_wait.observe(seconds, self.route)
