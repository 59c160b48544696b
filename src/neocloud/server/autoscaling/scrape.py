"""Engine signals of a deployment, read from its ready replicas' ``/metrics``.

The one module of ``server.autoscaling`` that does I/O: the deployment reconciler calls
:meth:`EngineScraper.scrape` once per tick for a deployment whose autoscaling signal is an
engine signal (:data:`SCRAPED_SIGNALS`), outside any database transaction, and puts the
totals into the :class:`~neocloud.server.autoscaling.signals.Sample` of that tick.

Every replica of an LLM engine serves the series of
:mod:`neocloud.serving.engine_metrics` (no labels; a vLLM replica's own series are renamed
onto them). Read here, summed over the replicas that answered:

=========================================  ==========================================
series                                     sample field
=========================================  ==========================================
``neocloud_engine_requests_waiting``       ``waiting_requests`` and ``queue_depth``
``neocloud_engine_kv_cache_usage_ratio``   ``kv_cache_use`` (0..1 per replica)
``neocloud_engine_tokens_in_flight``       ``tokens_in_flight``
``neocloud_engine_requests_running``       kept in :class:`EngineTotals` (not a signal)
=========================================  ==========================================

``tokens_in_flight`` is exported by the built-in engine; vLLM has no such gauge (its token
series are counters of what was admitted and generated), so for a vLLM deployment it stays
``None`` and a deployment scaling on it keeps its count (``NO_METRICS``).

A replica that does not answer within ``timeout_s``, answers with an error status, or
serves text that does not parse is skipped and counted (:attr:`EngineTotals.failed`, and
per replica in a :class:`ScrapeFailures`, by default the process's
:data:`SCRAPE_FAILURES`, which the control plane's ``/metrics`` exports as
``neocloud_engine_scrape_failures_total{workspace,deployment}``, see
:mod:`neocloud.server.metering.metrics`); the
whole scrape returns after at most ``deadline_s`` whatever the replicas do. A series that
no replica that answered exports is ``None`` in the totals (the policy then skips the
sample rather than reading it as zero).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field, replace

import httpx
from prometheus_client.parser import text_string_to_metric_families

from neocloud.models.autoscaling import AutoscalingSignal
from neocloud.server.autoscaling.signals import Sample
from neocloud.serving.engine_metrics import KV_USAGE, RUNNING, TOKENS_IN_FLIGHT, WAITING

log = logging.getLogger(__name__)

#: Signals that come from the replicas' ``/metrics`` rather than from the gateway.
SCRAPED_SIGNALS: frozenset[AutoscalingSignal] = frozenset({
    AutoscalingSignal.queue_depth, AutoscalingSignal.tokens_in_flight,
    AutoscalingSignal.kv_cache_use, AutoscalingSignal.waiting_requests})

#: The gauges read from each replica.
ENGINE_GAUGES: tuple[str, ...] = (RUNNING, WAITING, KV_USAGE, TOKENS_IN_FLIGHT)

#: The most bytes of one replica's ``/metrics`` read (the engine series are a few KiB).
MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """One ready replica: its id and the full URL of its ``/metrics``."""

    replica_id: str
    url: str


@dataclass(frozen=True, slots=True)
class EngineTotals:
    """The engine gauges of a deployment, summed over the replicas that answered.

    Attributes:
        running: requests in the engines' running batches (None: no replica exports it).
        waiting: requests accepted but not scheduled yet.
        kv_cache_use: sum of the replicas' KV-cache use fractions (0..answered).
        tokens_in_flight: prompt + generated tokens of the running requests (built-in
            engine only).
        answered: replicas whose ``/metrics`` was read and parsed.
        failed: ids of the replicas that were skipped (no answer in time, an error status,
            or text that does not parse).
    """

    running: float | None = None
    waiting: float | None = None
    kv_cache_use: float | None = None
    tokens_in_flight: float | None = None
    answered: int = 0
    failed: tuple[str, ...] = field(default_factory=tuple)

    def into(self, sample: Sample) -> Sample:
        """``sample`` with the engine fields these totals fill (see the module's table);
        with nothing scraped they are ``None``, as in a sample without engine signals."""
        return replace(sample, queue_depth=self.waiting, waiting_requests=self.waiting,
                       kv_cache_use=self.kv_cache_use,
                       tokens_in_flight=self.tokens_in_flight)


def parse_engine_metrics(text: str) -> dict[str, float]:
    """The :data:`ENGINE_GAUGES` in one replica's exposition ``text``, each summed over
    its label sets; a gauge the text lacks is absent from the result.

    Raises:
        ValueError: the text is not valid Prometheus exposition format.
    """
    out: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in ENGINE_GAUGES:
                    out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    except (IndexError, KeyError, TypeError) as e:  # the parser's other ways to fail
        raise ValueError(f"malformed metrics text: {e}") from e
    return out


class ScrapeFailures:
    """How many times each replica's ``/metrics`` could not be read, since the process
    started (thread-safe; counts only grow).

    Kept by replica id because a scrape knows only its targets; the control plane's
    metrics collector resolves the ids to their deployments when it renders the counter.
    One entry per replica that ever failed (a few dozen bytes each).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, replica_ids: Sequence[str]) -> None:
        """Count one failed read of each of ``replica_ids``."""
        if not replica_ids:
            return
        with self._lock:
            for rid in replica_ids:
                self._counts[rid] = self._counts.get(rid, 0) + 1

    def snapshot(self) -> dict[str, int]:
        """``{replica id: failed reads}`` now (a copy)."""
        with self._lock:
            return dict(self._counts)


#: The failures of every :class:`EngineScraper` of this process that was given no store of
#: its own (the deployment reconciler's), read by the control plane's ``/metrics``.
SCRAPE_FAILURES = ScrapeFailures()


def _add(a: float | None, b: float | None) -> float | None:
    if b is None:
        return a
    return b if a is None else a + b


class EngineScraper:
    """Reads the engine gauges of many replicas at once, bounded in time and threads.

    Args:
        timeout_s: per replica: connect, read and write timeout of its request, seconds.
        deadline_s: the most one :meth:`scrape` waits for all its replicas, seconds
            (default ``2 * timeout_s``); a replica not done by then is counted failed.
        max_parallel: replicas fetched at once (worker threads and connections).
        transport: an httpx transport to use instead of the network (tests).
        failures: where each skipped replica is counted (default :data:`SCRAPE_FAILURES`).

    The thread pool and the HTTP client are made on the first scrape and kept (the
    reconciler scrapes every tick); :meth:`close` ends them.
    """

    def __init__(self, *, timeout_s: float = 1.0, deadline_s: float | None = None,
                 max_parallel: int = 8, transport: httpx.BaseTransport | None = None,
                 failures: ScrapeFailures | None = None) -> None:
        if timeout_s <= 0 or max_parallel < 1:
            raise ValueError("timeout_s must be positive and max_parallel at least 1")
        self.failures = failures if failures is not None else SCRAPE_FAILURES
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s if deadline_s is not None else 2 * timeout_s
        self.max_parallel = max_parallel
        self._transport = transport
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._client: httpx.Client | None = None

    def _started(self) -> tuple[ThreadPoolExecutor, httpx.Client]:
        with self._lock:
            if self._pool is None or self._client is None:
                self._pool = ThreadPoolExecutor(max_workers=self.max_parallel,
                                                thread_name_prefix="neocloud-scrape")
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout_s),
                    limits=httpx.Limits(max_connections=self.max_parallel,
                                        max_keepalive_connections=self.max_parallel),
                    transport=self._transport, trust_env=False)
            return self._pool, self._client

    def fetch(self, target: ScrapeTarget) -> dict[str, float]:
        """The engine gauges of one replica.

        Raises:
            httpx.HTTPError: no answer within the timeout, or a status other than 200.
            ValueError: the body is larger than :data:`MAX_BODY_BYTES`, not UTF-8, or not
                valid exposition text.
        """
        _pool, client = self._started()
        with client.stream("GET", target.url) as resp:
            resp.raise_for_status()
            body = bytearray()
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise ValueError(f"metrics larger than {MAX_BODY_BYTES} bytes")
        return parse_engine_metrics(body.decode("utf-8"))

    def scrape(self, targets: Sequence[ScrapeTarget]) -> EngineTotals:
        """Fetch every target's ``/metrics`` in parallel and sum the gauges; returns within
        about ``deadline_s`` (see the class). Never raises for a replica's failure: a
        skipped replica is listed in ``failed`` and counted in :attr:`failures`."""
        if not targets:
            return EngineTotals()
        pool, _client = self._started()
        futures: dict[Future[dict[str, float]], ScrapeTarget] = {
            pool.submit(self.fetch, t): t for t in targets}
        done, _late = wait_futures(futures, timeout=self.deadline_s)
        running = waiting = kv = tif = None
        answered = 0
        failed: list[str] = []
        for fut, target in futures.items():
            if fut not in done:
                failed.append(target.replica_id)
                log.debug("replica %s: /metrics not read within %.1f s", target.replica_id,
                          self.deadline_s)
                continue
            try:
                values = fut.result()
            except (httpx.HTTPError, ValueError) as e:
                failed.append(target.replica_id)
                log.debug("replica %s: /metrics skipped: %s", target.replica_id, e)
                continue
            answered += 1
            running = _add(running, values.get(RUNNING))
            waiting = _add(waiting, values.get(WAITING))
            kv = _add(kv, values.get(KV_USAGE))
            tif = _add(tif, values.get(TOKENS_IN_FLIGHT))
        self.failures.add(failed)
        return EngineTotals(running=running, waiting=waiting, kv_cache_use=kv,
                            tokens_in_flight=tif,
                            answered=answered, failed=tuple(failed))

    def close(self) -> None:
        """End the HTTP client and the thread pool (a later scrape makes new ones)."""
        with self._lock:
            pool, client = self._pool, self._client
            self._pool = self._client = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if client is not None:
            client.close()
