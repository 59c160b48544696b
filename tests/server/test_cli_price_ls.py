"""``neocloud price ls`` says what is billed: the shapes' own hourly list prices while no
version of them is in force, the versions, and which meters have no price (billed $0)
(a live control plane, both databases)."""

from __future__ import annotations

import json

from tests.server.helpers import set_past_price


def _rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines() if line.startswith(("shape", "model"))]


def test_a_fresh_cloud_lists_the_shapes_list_prices_and_says_tokens_are_free(cli_db) -> None:  # type: ignore[no-untyped-def]
    r = cli_db("price", "ls")
    assert r.exit_code == 0, r.output
    rows = _rows(r.stdout)
    assert ["shape", "cpu.small", "$0.04/h", "(list", "price)", "shape"] in rows
    assert ["shape", "gpu.h100", "$2.50/h", "(list", "price)", "shape"] in rows
    assert "No token price is set: tokens through the gateway are billed $0.00" in r.stderr
    assert "price set model '*'" in r.stderr
    assert "No storage price is set: volumes are billed $0.00" in r.stderr
    # --json stays the API's answer: the price versions (none yet)
    assert json.loads(cli_db("price", "ls", "--json").stdout) == []


def test_a_version_in_force_replaces_the_list_price(cli_db) -> None:  # type: ignore[no-untyped-def]
    set_past_price(cli_db.app, kind="shape", target="gpu.h100", per_hour_micros=3_250_000,
                   effective_at="2026-01-01T00:00:00Z")
    assert cli_db("price", "set", "shape", "cpu.small", "--per-hour", "0.05",
                  "--effective", "2099-01-01T00:00:00").exit_code == 0  # not yet
    assert cli_db("price", "set", "model", "*", "--input-per-m", "0.1",
                  "--output-per-m", "0.2").exit_code == 0
    assert cli_db("price", "set", "storage", "*", "--per-gib-hour", "0.0002").exit_code == 0
    r = cli_db("price", "ls")
    assert r.exit_code == 0, r.output
    h100 = [row for row in _rows(r.stdout) if row[1] == "gpu.h100"]
    assert h100 == [["shape", "gpu.h100", "$3.25/h", "2026-01-01", "00:00:00", "UTC",
                     "admin-1"]]
    small = [row[2] for row in _rows(r.stdout) if row[1] == "cpu.small"]
    assert small == ["$0.04/h", "$0.05/h"]  # the list price until the version's time
    assert r.stderr == ""  # every meter has a price

    r = cli_db("price", "ls", "--kind", "model")
    assert [row[:2] for row in _rows(r.stdout)] == [["model", "*"]]
    r = cli_db("price", "ls", "--kind", "nope")
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_a_model_price_without_a_default_says_others_are_free(cli_db) -> None:  # type: ignore[no-untyped-def]
    assert cli_db("price", "set", "model", "chat", "--input-per-m", "0.15",
                  "--output-per-m", "0.6").exit_code == 0
    r = cli_db("price", "ls", "--kind", "model")
    assert "that no model price names" in r.stderr and "No storage" not in r.stderr
