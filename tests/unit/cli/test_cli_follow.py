from __future__ import annotations

from collections.abc import Callable

from fakecloud import FakeCloud
from typer.testing import Result

from neocloud.cli.follow import new_lines

Run = Callable[..., Result]


def test_new_lines_of_a_short_log_are_exact_even_when_repeated() -> None:
    assert new_lines([], ["a", "b"]) == ["a", "b"]
    assert new_lines(["h", "h"], ["h", "h", "h"]) == ["h"]
    assert new_lines(["a", "b"], ["a", "b"]) == []
    assert new_lines(["x", "h"], ["x", "h", "h", "y"]) == ["h", "y"]


def test_new_lines_of_a_sliding_window() -> None:
    # Windows of 4 lines over a growing log 0..n.
    log = [f"l{i}" for i in range(20)]
    assert new_lines(log[4:8], log[6:10]) == ["l8", "l9"]
    assert new_lines(log[4:8], log[7:11]) == ["l8", "l9", "l10"]
    # Grown past the window: nothing overlaps, everything is new.
    assert new_lines(log[0:4], log[10:14]) == log[10:14]
    # A longer previous window (the first poll fetched more) still overlaps.
    assert new_lines(log[0:8], log[6:10]) == ["l8", "l9"]
    # A log that was replaced by a shorter one.
    assert new_lines(["a", "b", "c"], ["d"]) == ["d"]


def test_follow_unknown_replica_is_an_error(run: Run, cloud: FakeCloud) -> None:
    run("deploy", "web", "-s", "embeddings", "--poll-interval", "0")
    result = run("logs", "web", "-f", "--replica", "nope", "--interval", "0")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: replica 'nope' not found")
    missing = run("logs", "other", "-f", "--interval", "0")
    assert missing.exit_code == 1 and "deployment 'other' not found" in missing.stderr


def test_follow_ends_when_the_deployment_goes(run: Run, cloud: FakeCloud) -> None:
    run("deploy", "web", "-s", "embeddings", "--poll-interval", "0")
    cloud.delete_after_log_requests = 2
    result = run("logs", "web", "-f", "--interval", "0")
    assert result.exit_code == 0
    assert "web is gone; stopped following." in result.stderr
