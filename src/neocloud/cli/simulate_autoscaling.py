"""``neocloud simulate``: a group of trace replays run on this machine, no control plane.

``neocloud simulate autoscaling`` replays a request trace through an autoscaling policy
(capacity planning: replica-seconds against requests served within a latency goal);
``neocloud simulate scheduler`` is the scheduler replay, which ``neocloud simulate
--nodes ... --pods ...`` (no sub-command) still runs as before.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import typer
from rich.text import Text
from typer.core import TyperGroup

from neocloud.cli import output
from neocloud.cli.output import print_json, table
from neocloud.errors import InvalidRequest, Unsupported

#: Per-token costs measured by ``benchmarks/serving``: ``MEASURED_*_S_PER_TOKEN`` of
#: ``neocloud.simulate.autoscaling`` in milliseconds (written out so that the CLI does not
#: import the simulator, and through it the policies, until the command runs; a unit test
#: checks they agree).
DEFAULT_DECODE_MS_PER_TOKEN = 62.4
DEFAULT_PREFILL_MS_PER_TOKEN = 3.76

_COLUMNS = (
    ("replica_seconds", "replica-s"), ("within_goal_pct", "% in goal"),
    ("p99_latency_s", "p99 s"), ("p99_wait_s", "p99 wait s"),
    ("scaling_changes", "changes"), ("cold_starts", "cold starts"),
    ("max_replicas", "max"), ("mean_replicas", "mean"),
)


class SimulateGroup(TyperGroup):
    """A group whose arguments, when they do not start with a sub-command name, go to
    ``scheduler`` (so ``neocloud simulate --nodes ...`` keeps working)."""

    default_command = "scheduler"

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help") \
                and self.default_command in self.commands:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def autoscaling(
    trace: Path = typer.Option(
        ..., "--trace", exists=True, dir_okay=False,
        help="Request trace CSV (TIMESTAMP,ContextTokens,GeneratedTokens), e.g. the Azure "
             "LLM inference trace 2023."),
    policy: str = typer.Option(
        "all", "--policy",
        help="target (ours), ray-serve-default, fixed, oracle, or all (comma-separated)."),
    start: float = typer.Option(0.0, "--start", min=0, help="Replay from this second."),
    end: float | None = typer.Option(None, "--end", min=0, help="Replay up to this second."),
    warmup: float = typer.Option(
        120.0, "--warmup", min=0, help="Seconds simulated but left out of the figures."),
    min_replicas: int = typer.Option(1, "--min", min=0, max=64, help="Fewest replicas."),
    max_replicas: int = typer.Option(64, "--max", min=1, max=64, help="Most replicas."),
    signal: str = typer.Option(
        "in_flight", "--signal",
        help="in_flight, requests_per_s, queue_depth, tokens_in_flight, kv_cache_use or "
             "waiting_requests."),
    target: float = typer.Option(
        7.0, "--target",
        help="Target value of the signal per replica (tuned for 8 concurrent requests)."),
    window: float = typer.Option(30.0, "--window", help="Stable window, seconds."),
    panic_window: float = typer.Option(6.0, "--panic-window", help="Burst window, seconds."),
    scale_up_delay: float = typer.Option(0.0, "--scale-up-delay", help="Seconds."),
    scale_down_delay: float = typer.Option(120.0, "--scale-down-delay", help="Seconds."),
    scale_to_zero_delay: float = typer.Option(600.0, "--scale-to-zero-delay", help="Seconds."),
    concurrency: int = typer.Option(8, "--concurrency", min=1,
                                    help="Requests one replica serves at once."),
    cold_start: float = typer.Option(30.0, "--cold-start", min=0,
                                     help="Seconds from replica start to ready."),
    prefill_ms: float = typer.Option(
        DEFAULT_PREFILL_MS_PER_TOKEN, "--prefill-ms-per-token", min=0,
        help="Service milliseconds per prompt token."),
    decode_ms: float = typer.Option(
        DEFAULT_DECODE_MS_PER_TOKEN, "--decode-ms-per-token", min=0.001,
        help="Milliseconds per generated token."),
    latency_goal: float = typer.Option(
        1.0, "--latency-goal", min=0, help="Most seconds a request may wait for a slot."),
    tick: float = typer.Option(1.0, "--tick", min=0.05, help="Seconds between decisions."),
    fixed_replicas: int | None = typer.Option(
        None, "--fixed-replicas", min=1, help="Size of the fixed fleet (default: the peak)."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Replay a request trace through autoscaling policies (no control plane needed).

    The defaults of our policy's settings are those ``benchmarks/autoscaling`` chose on
    the Azure LLM inference trace for replicas of 8 concurrent requests.

    Each request is served for prompt tokens x prefill cost + generated tokens x decode
    cost on a replica with a free slot; new replicas serve after the cold start; the
    policy decides every tick. Prints replica-seconds, the share of requests that waited
    at most the latency goal, p99 latency, scaling changes and cold starts per policy.
    """
    names = ["target", "ray-serve-default", "fixed", "oracle"] if policy == "all" else [
        p.strip() for p in policy.split(",") if p.strip()]
    try:
        sim = importlib.import_module("neocloud.simulate.autoscaling")
        models = importlib.import_module("neocloud.models.autoscaling")
    except ModuleNotFoundError as exc:  # pragma: no cover - a broken install
        raise Unsupported(f"`neocloud simulate autoscaling` needs {exc.name!r}") from exc
    bad = [n for n in names if n not in sim.POLICY_NAMES]
    if bad or not names:
        raise typer.BadParameter(
            f"unknown policy {bad[0] if bad else policy!r}; known: "
            f"{', '.join(sim.POLICY_NAMES)} or all", param_hint="'--policy'")
    if signal not in models.AutoscalingSignal.__members__:
        raise typer.BadParameter(
            f"unknown signal {signal!r}; known: {', '.join(models.AutoscalingSignal)}",
            param_hint="'--signal'")
    try:
        config = models.AutoscalingConfig(
            min_replicas=min_replicas, max_replicas=max_replicas, signal=signal, target=target,
            window_s=window, panic_window_s=panic_window, scale_up_delay_s=scale_up_delay,
            scale_down_delay_s=scale_down_delay, scale_to_zero_delay_s=scale_to_zero_delay)
        model = sim.ReplicaModel(
            prefill_s_per_token=prefill_ms / 1000, decode_s_per_token=decode_ms / 1000,
            concurrency=concurrency, cold_start_s=cold_start)
        requests = sim.load_azure_trace(trace)
        if start or end is not None:
            requests = sim.window(requests, start, end if end is not None else float("inf"))
        results = sim.compare(requests, model, config, names, tick_s=tick,
                              latency_goal_s=latency_goal, warmup_s=warmup,
                              fixed_replicas=fixed_replicas)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        raise InvalidRequest(_first_line(exc)) from None
    rows = [r.to_dict() for r in results]
    if json_out:
        print_json(rows if len(rows) > 1 else rows[0])
        return
    oracle = next((r for r in rows if r["policy"] == "oracle"), None)
    header = ["POLICY", *(c[1].upper() for c in _COLUMNS)]
    if oracle:
        header.append("VS ORACLE")
    body = []
    for r in rows:
        cells: list[Any] = [r["policy"], *(_fmt(r[k]) for k, _ in _COLUMNS)]
        if oracle:
            cells.append(f"{r['replica_seconds'] / oracle['replica_seconds']:.2f}x")
        body.append(cells)
    first = rows[0]
    output.out.print(Text(
        f"Autoscaling simulation: {first['requests']} requests over {first['duration_s']:.0f} s, "
        f"goal: wait <= {latency_goal:g} s", style="bold"))
    output.out.print(table(header, body))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _first_line(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # a pydantic ValidationError: name the setting
        parts = []
        for e in errors():
            msg = str(e.get("msg", "")).removeprefix("Value error, ")
            loc = ".".join(str(x) for x in e.get("loc", ()))
            parts.append(f"{loc}: {msg}" if loc else msg)
        return "; ".join(parts)
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def register(app: typer.Typer) -> None:
    """Add ``simulate autoscaling`` and move the command already registered as
    ``simulate`` (the scheduler replay) under the group as ``simulate scheduler``."""
    group = typer.Typer(
        cls=SimulateGroup, no_args_is_help=True,
        help="Replay traces on this machine: autoscaling policies or the scheduler.")
    for info in list(app.registered_commands):
        name = info.name or (info.callback.__name__ if info.callback else "")
        if name == "simulate":
            app.registered_commands.remove(info)
            info.name = "scheduler"
            group.registered_commands.append(info)
    group.command("autoscaling")(autoscaling)
    app.add_typer(group, name="simulate")
