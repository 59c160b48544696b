"""The engine-signal scraper against real HTTP servers on loopback standing in for
replicas: sums over the replicas that answer, skips (and names) the ones that do not,
and never waits for a replica past its deadline."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from tests.unit.autoscaling.metrics_server import MetricsServer, engine_text

from neocloud.server.autoscaling import Sample
from neocloud.server.autoscaling.scrape import (
    EngineScraper,
    EngineTotals,
    ScrapeTarget,
    parse_engine_metrics,
)
from neocloud.serving.engine_metrics import (
    KV_USAGE,
    RUNNING,
    TOKENS_IN_FLIGHT,
    WAITING,
    translate_vllm,
)


@pytest.fixture
def servers() -> Iterator[list[MetricsServer]]:
    made: list[MetricsServer] = []
    yield made
    for s in made:
        s.close()


@pytest.fixture
def scraper() -> Iterator[EngineScraper]:
    sc = EngineScraper(timeout_s=5.0, deadline_s=10.0)
    yield sc
    sc.close()


def _serve(servers: list[MetricsServer], *args: object, **kw: object) -> MetricsServer:
    s = MetricsServer(*args, **kw)  # type: ignore[arg-type]
    servers.append(s)
    return s


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once closed


def test_parse_reads_the_engine_gauges_of_the_engine_renderer() -> None:
    got = parse_engine_metrics(engine_text(running=3, waiting=2, kv_usage=0.625))
    assert got == {RUNNING: 3.0, WAITING: 2.0, KV_USAGE: 0.625}
    got = parse_engine_metrics(engine_text(running=3, kv_usage=0.5, tokens_in_flight=700))
    assert got[TOKENS_IN_FLIGHT] == 700.0


def test_tokens_in_flight_are_summed_over_replicas_into_the_sample(
        servers: list[MetricsServer], scraper: EngineScraper) -> None:
    a = _serve(servers, engine_text(running=2, tokens_in_flight=300))
    b = _serve(servers, engine_text(running=1, tokens_in_flight=150))
    got = scraper.scrape([ScrapeTarget("a", a.url), ScrapeTarget("b", b.url)])
    assert got.tokens_in_flight == 450.0
    assert got.into(Sample(at=1.0, ready_replicas=2)).tokens_in_flight == 450.0


def test_parse_sums_label_sets_and_reads_translated_vllm_text() -> None:
    text = ("# TYPE neocloud_engine_requests_waiting gauge\n"
            'neocloud_engine_requests_waiting{engine="0"} 1\n'
            'neocloud_engine_requests_waiting{engine="1"} 4\n')
    assert parse_engine_metrics(text) == {WAITING: 5.0}
    vllm = ('vllm:num_requests_running{model_name="m"} 2.0\n'
            'vllm:num_requests_waiting{model_name="m"} 7.0\n'
            'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n')
    assert parse_engine_metrics(translate_vllm(vllm)) == {RUNNING: 2.0, WAITING: 7.0,
                                                         KV_USAGE: 0.5}


def test_parse_of_text_without_engine_series_is_empty() -> None:
    text = ("# TYPE neocloud_requests_in_flight gauge\nneocloud_requests_in_flight 3\n")
    assert parse_engine_metrics(text) == {}


@pytest.mark.parametrize("text", ["neocloud_engine_requests_waiting{ 3\n",
                                  "neocloud_engine_requests_waiting abc\n"])
def test_parse_of_malformed_text_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_engine_metrics(text)


def test_scrape_sums_over_replicas(servers: list[MetricsServer],
                                  scraper: EngineScraper) -> None:
    a = _serve(servers, engine_text(running=4, waiting=1, kv_usage=0.5))
    b = _serve(servers, engine_text(running=8, waiting=3, kv_usage=0.75))
    got = scraper.scrape([ScrapeTarget("a", a.url), ScrapeTarget("b", b.url)])
    assert got == EngineTotals(running=12.0, waiting=4.0, kv_cache_use=1.25, answered=2,
                               failed=())
    # a second tick reuses the client and the pool
    assert scraper.scrape([ScrapeTarget("a", a.url)]).kv_cache_use == 0.5
    assert a.requests == 2


def test_replicas_that_fail_are_skipped_and_named(servers: list[MetricsServer],
                                                  scraper: EngineScraper) -> None:
    good = _serve(servers, engine_text(running=2, waiting=5, kv_usage=0.25))
    error = _serve(servers, "oops", status=500)
    garbage = _serve(servers, "neocloud_engine_requests_waiting{ 3\n")
    targets = [ScrapeTarget("good", good.url), ScrapeTarget("error", error.url),
               ScrapeTarget("garbage", garbage.url),
               ScrapeTarget("gone", f"http://127.0.0.1:{_closed_port()}/metrics")]
    got = scraper.scrape(targets)
    assert (got.running, got.waiting, got.kv_cache_use) == (2.0, 5.0, 0.25)
    assert got.answered == 1
    assert sorted(got.failed) == ["error", "garbage", "gone"]


def test_a_replica_that_does_not_answer_does_not_hold_up_the_scrape(
        servers: list[MetricsServer]) -> None:
    good = _serve(servers, engine_text(waiting=1, kv_usage=0.5))
    stuck = _serve(servers, engine_text(waiting=100, kv_usage=1.0), hold=True)
    # the read timeout is longer than the deadline: only the deadline ends the wait
    sc = EngineScraper(timeout_s=30.0, deadline_s=2.0)
    try:
        got = sc.scrape([ScrapeTarget("good", good.url), ScrapeTarget("stuck", stuck.url)])
        # the stuck replica is still holding its answer: the scrape returned before it
        assert stuck.requests == 1 and not stuck._gate.is_set()
        assert got.failed == ("stuck",) and got.answered == 1
        assert (got.waiting, got.kv_cache_use) == (1.0, 0.5)
    finally:
        stuck.release()
        sc.close()


def test_no_engine_series_leaves_the_signals_unknown(servers: list[MetricsServer],
                                                    scraper: EngineScraper) -> None:
    plain = _serve(servers, "# TYPE neocloud_requests_in_flight gauge\n"
                            "neocloud_requests_in_flight 3\n")
    got = scraper.scrape([ScrapeTarget("p", plain.url)])
    assert got.answered == 1 and got.failed == ()
    assert got.into(Sample(at=1.0, ready_replicas=1)).kv_cache_use is None


def test_totals_fill_the_sample_fields() -> None:
    base = Sample(at=5.0, ready_replicas=2, in_flight=7, held=1, requests_per_s=3.0)
    s = EngineTotals(running=9.0, waiting=4.0, kv_cache_use=1.5, answered=2).into(base)
    assert (s.at, s.ready_replicas, s.in_flight, s.held, s.requests_per_s) == (
        5.0, 2, 7, 1, 3.0)
    assert (s.waiting_requests, s.queue_depth, s.kv_cache_use, s.tokens_in_flight) == (
        4.0, 4.0, 1.5, None)
    assert EngineScraper().scrape([]) == EngineTotals()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        EngineScraper(timeout_s=0)
    with pytest.raises(ValueError):
        EngineScraper(max_parallel=0)
