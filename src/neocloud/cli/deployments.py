"""Deployment commands: ``deploy``, ``scale``, ``ls``, ``status``, ``logs``, ``rm``."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from neocloud.cli import output
from neocloud.cli.autoscaling_options import (
    IDLE_TO_ZERO_DEFAULT_S,
    given_fields,
    idle_to_zero_option,
    scale_down_delay_option,
    scale_up_delay_option,
    to_config,
)
from neocloud.cli.context import client
from neocloud.cli.follow import follow
from neocloud.cli.output import age, note, print_json, status_text, table
from neocloud.cli.params import check_fields, parse_pairs
from neocloud.errors import AlreadyExists, NotFound, PermissionDenied, Timeout
from neocloud.models import (
    DeploymentCreate,
    DeploymentOut,
    DeploymentUpdate,
    EventOut,
    NodeOut,
)
from neocloud.models.deployments import Engine
from neocloud.sdk import Client, WaitProgress
from neocloud.sdk.deployments import brief

_OPTIONS = {
    "name": "NAME",
    "service": "--service",
    "engine": "--engine",
    "model": "--model",
    "shape": "--shape",
    "replicas": "--replicas",
    "env": "--env",
    "drain_timeout_s": "--drain-timeout",
    "cold_start_timeout_s": "--cold-start-timeout",
}
JSON_HELP = "Print JSON to stdout instead of a table."
#: Replica ids are shown by their first characters (``--replica`` takes a prefix too).
REPLICA_ID_CHARS = 12


def local_service_path(service: str | None) -> str | None:
    """``file.py:Class`` with the file made absolute (the control plane runs elsewhere, in
    another folder); other references unchanged.

    Raises:
        typer.BadParameter: the file does not exist here.
    """
    if service is None or ":" not in service:
        return service
    path, cls = service.rsplit(":", 1)
    if not path.endswith(".py"):
        return service
    file = Path(path).expanduser()
    if not file.is_file():
        raise typer.BadParameter(f"service file {path!r} not found", param_hint="'--service'")
    return f"{file.resolve()}:{cls}"


def deploy(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Deployment name (also its OpenAI model name)."),
    service: str | None = typer.Option(
        None,
        "--service",
        "-s",
        help="embeddings, chat, package.module:Class or file.py:Class (needed to create "
        "with the builtin engine; not with --engine vllm).",
    ),
    engine: Engine | None = typer.Option(
        None, "--engine",
        help="What runs the replicas: builtin (default) or vllm (vLLM's OpenAI server; "
        "`make install-vllm` installs it)."),
    model: str | None = typer.Option(
        None, "--model", "-m",
        help="Model of a built-in service, or of --engine vllm: PATH or hf:ORG/NAME "
        "(vllm default: the built-in chat model)."),
    shape: str | None = typer.Option(
        None, "--shape", help="Resource shape (see `neocloud shape ls`) (default: cpu.small)."
    ),
    replicas: int | None = typer.Option(
        None, "--replicas", "-r", min=0, max=64, help="Replica count (default: 1)."
    ),
    env: list[str] | None = typer.Option(
        None,
        "--env",
        "-e",
        help="Environment variable KEY=VALUE (repeatable; with --update the "
        "given set replaces the old one).",
    ),
    secret: list[str] | None = typer.Option(
        None, "--secret",
        help="ENV=SECRET: give a workspace secret to every replica as variable ENV "
        "(repeatable).",
    ),
    priority: int = typer.Option(
        0, "--priority", min=-1000, max=1000,
        help="Larger is more important; may preempt lower-priority preemptible work.",
    ),
    preemptible: bool = typer.Option(
        False, "--preemptible", help="Let higher-priority work stop these replicas."
    ),
    min_replicas: int | None = typer.Option(
        None, "--min", min=0, max=64,
        help="Autoscale: fewest replicas (0: scale to zero when idle, woken by a request)."),
    max_replicas: int | None = typer.Option(
        None, "--max", min=1, max=64, help="Autoscale: most replicas."),
    target_inflight: float | None = typer.Option(
        None, "--target-inflight", min=0.001,
        help="Autoscale: requests in flight per replica to aim for (default 2)."),
    idle_to_zero: float | None = idle_to_zero_option(),
    scale_up_delay: float | None = scale_up_delay_option(),
    scale_down_delay: float | None = scale_down_delay_option(),
    drain_timeout: float | None = typer.Option(
        None, "--drain-timeout", min=0, max=3600,
        help="Seconds a stopping replica may finish its requests (default 120)."),
    cold_start_timeout: float | None = typer.Option(
        None, "--cold-start-timeout", min=0.001, max=3600,
        help="Seconds a request waits while the deployment starts from zero (default 120)."),
    dry_run: bool = typer.Option(
        False, "--dry-run",
        help="Store nothing: say whether a replica fits now, could ever fit, and why not."),
    update: bool = typer.Option(
        False,
        "--update",
        "-u",
        help="If the deployment exists, change it with the given options instead of failing.",
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until every replica is ready."),
    timeout: float = typer.Option(600.0, "--timeout", min=0, help="Seconds to wait for ready."),
    poll: float = typer.Option(1.0, "--poll-interval", min=0, hidden=True),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Create a deployment (or change it with --update) and wait until it is ready."""
    env_map = parse_pairs(env, option="--env") if env else None
    secret_map = parse_pairs(secret, option="--secret") if secret else None
    service = local_service_path(service)
    given = given_fields(min_replicas=min_replicas, max_replicas=max_replicas,
                         target_inflight=target_inflight, idle_to_zero_s=idle_to_zero,
                         scale_up_delay_s=scale_up_delay, scale_down_delay_s=scale_down_delay)
    scaling = to_config(given) if given else None
    api = client(ctx)
    existing = _get_or_none(api, name) if update else None
    needs_service = engine is None or engine == Engine.builtin
    if dry_run:
        if service is None and needs_service:
            raise typer.BadParameter("is required for --dry-run", param_hint="'--service'")
        check_fields(DeploymentCreate, dict(name=name, service=service, engine=engine,
                                            model=model, shape=shape, env=env_map), _OPTIONS)
        plan = api.deployments.dry_run(
            name, service, shape=shape or "cpu.small", priority=priority, model=model,
            engine=engine,
            env=env_map, secrets=secret_map, autoscaling=scaling)
        output.print_warnings(plan.warnings)
        if json_out:
            print_json(plan)
        elif plan.fits_now:
            output.out.print(Text(f"Fits: a replica of {name} would start on node "
                                  f"{plan.node} now (nothing was stored)."))
        else:
            verdict = "waits for room" if plan.can_ever_fit else "can never fit"
            output.out.print(Text(f"Does not fit now; {verdict} [{plan.code}]: {plan.reason}"))
        if not plan.can_ever_fit:
            raise typer.Exit(1)
        return
    if existing is None:
        if service is None and needs_service:
            raise typer.BadParameter("is required to create a deployment (or pass "
                                     "--engine vllm)", param_hint="'--service'")
        fields = dict(name=name, service=service, engine=engine, model=model, shape=shape,
                      replicas=replicas, env=env_map)
        check_fields(DeploymentCreate, fields, _OPTIONS)
        try:
            deployment = api.deployments.create(
                name,
                service,
                engine=engine,
                model=model,
                shape=shape or "cpu.small",
                replicas=1 if replicas is None else replicas,
                env=env_map,
                priority=priority,
                preemptible=preemptible,
                secrets=secret_map,
                autoscaling=scaling,
                drain_timeout_s=drain_timeout,
                cold_start_timeout_s=cold_start_timeout,
            )
        except AlreadyExists as exc:
            raise AlreadyExists(
                f"{exc.message} (pass --update to change it, or `neocloud scale` to resize it)",
                param=exc.param,
                code=exc.code,
            ) from exc
        action = "Created"
    else:
        fields = dict(service=service, engine=engine, model=model, shape=shape,
                      replicas=replicas, env=env_map)
        check_fields(DeploymentUpdate, fields, _OPTIONS)
        deployment = api.deployments.update(
            name, service=service, engine=engine, model=model, shape=shape, replicas=replicas,
            env=env_map,
            autoscaling=scaling, drain_timeout_s=drain_timeout,
            cold_start_timeout_s=cold_start_timeout,
        )
        action = "Updated"
    output.print_warnings(deployment.warnings)
    if not json_out:
        note(f"{action} deployment {name} (generation {deployment.generation}).")
    if wait and deployment.replicas > 0:
        deployment = _wait_ready(api, name, timeout_s=timeout, poll_s=poll)
    if json_out:
        print_json(deployment)
    else:
        _print_ready(api, deployment, waited=wait)


def autoscale(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Deployment name."),
    min_replicas: int | None = typer.Option(
        None, "--min", min=0, max=64,
        help="Fewest replicas (0: scale to zero after --idle-to-zero seconds without a "
        f"request, default {IDLE_TO_ZERO_DEFAULT_S:g} s; a request wakes it)."),
    max_replicas: int | None = typer.Option(None, "--max", min=1, max=64,
                                            help="Most replicas."),
    target_inflight: float | None = typer.Option(
        None, "--target-inflight", min=0.001, help="Requests in flight per replica."),
    idle_to_zero: float | None = idle_to_zero_option(),
    scale_up_delay: float | None = scale_up_delay_option(),
    scale_down_delay: float | None = scale_down_delay_option(),
    off: bool = typer.Option(False, "--off", help="Stop autoscaling; keep the current count."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Make a deployment follow its load (or, with --off, stop it). With --min 0 it goes to
    zero replicas after --idle-to-zero seconds (default 600 s) without a request. Options
    not given keep their current values."""
    api = client(ctx)
    if off:
        deployment = api.deployments.autoscale(name, None)
    else:
        current = api.deployments.get(name).autoscaling
        given = given_fields(
            min_replicas=min_replicas, max_replicas=max_replicas,
            target_inflight=target_inflight, idle_to_zero_s=idle_to_zero,
            scale_up_delay_s=scale_up_delay, scale_down_delay_s=scale_down_delay)
        if not given and current is None:
            raise typer.BadParameter(
                "give --min, --max, --target-inflight, --idle-to-zero, --scale-up-delay or "
                "--scale-down-delay (or --off)", param_hint="'--min'")
        # the options given change the stored settings; the others keep their values
        base = current.model_dump() if current is not None else {}
        config = to_config({**base, **given})
        deployment = api.deployments.autoscale(name, config)
    if json_out:
        print_json(deployment)
        return
    a = deployment.autoscaling
    output.out.print(Text(
        f"Autoscaling of {name}: " + (f"{a.min_replicas}..{a.max_replicas} replicas, "
                                      f"target {a.target:g} {a.signal.value} per replica"
                                      if a else "off")
        + (f", scale-down delay {a.scale_down_delay_s:g} s" if a else "")
        + (f", to zero after {a.scale_to_zero_delay_s:g} s idle"
           if a and a.min_replicas == 0 else "")
        + f" ({deployment.replicas} desired, {deployment.ready_replicas} ready)."))


def history(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Deployment name."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The revisions of a deployment: the active one and those it superseded."""
    revs = client(ctx).deployments.history(name)
    if json_out:
        print_json(revs)
        return
    output.out.print(table(
        ("REVISION", "STATE", "GEN", "AGE", "CHANGE"),
        [(r.revision, "active" if r.active else "superseded", r.generation, age(r.created_at),
          brief(r.message)) for r in revs]))


def scale(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Deployment name."),
    replicas: int = typer.Argument(..., min=0, max=64, help="Desired replica count."),
    wait: bool = typer.Option(False, "--wait/--no-wait", help="Wait until ready."),
    timeout: float = typer.Option(600.0, "--timeout", min=0, help="Seconds to wait for ready."),
    poll: float = typer.Option(1.0, "--poll-interval", min=0, hidden=True),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Set the replica count of a deployment."""
    api = client(ctx)
    deployment = api.deployments.scale(name, replicas)
    if wait:
        deployment = _wait_ready(api, name, timeout_s=timeout, poll_s=poll)
    if json_out:
        print_json(deployment)
        return
    output.out.print(
        Text(
            f"Scaled {name} to {replicas} replica{'s' if replicas != 1 else ''} "
            f"({deployment.ready_replicas} ready now)."
        )
    )
    if replicas == 0 and deployment.autoscaling is None:
        note(f"Its replicas drain, then stop. Until you scale it up, requests to {name} get"
             " 503 deployment_scaled_to_zero (a request cannot wake it; for that use "
             f"`neocloud autoscale {name} --min 0 --max N`).")


def ls(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List the workspace's deployments."""
    deployments = client(ctx).deployments.list()
    if json_out:
        print_json(deployments)
        return
    if not deployments:
        note("No deployments. Create one with `neocloud deploy NAME --service embeddings`.")
        return
    output.out.print(_deployment_table(deployments))


def status(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="Deployment name; omit for a summary."),
    events: int = typer.Option(10, "--events", min=0, help="How many recent events to show."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Show a deployment in detail, or a summary of deployments and nodes."""
    api = client(ctx)
    if name is None:
        _summary(api, json_out)
        return
    deployment = api.deployments.get(name)
    recent = api.deployments.events(name)[-events:] if events else []
    if json_out:
        print_json({"deployment": deployment, "events": recent})
        return
    _print_detail(api, deployment, recent)


def logs(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Deployment name."),
    tail: int | None = typer.Option(None, "--tail", "-n", min=0, help="Only the last N lines."),
    replica: str | None = typer.Option(None, "--replica", help="Only this replica's log."),
    follow_: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines."),
    interval: float = typer.Option(1.0, "--interval", min=0.0, hidden=True),
    max_polls: int | None = typer.Option(None, "--max-polls", min=1, hidden=True),
) -> None:
    """Print the logs of a deployment's replicas (raw text on stdout)."""
    api = client(ctx)
    if not follow_:
        text = api.deployments.logs(name, tail=tail, replica=replica)
        typer.echo(text, nl=bool(text) and not text.endswith("\n"))
        return
    follow(
        api,
        name,
        replica=replica,
        tail=tail,
        interval_s=interval,
        write=typer.echo,
        on_gone=lambda: note(f"{name} is gone; stopped following."),
        max_polls=max_polls,
    )


def rm(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Deployment name."),
    wait: bool = typer.Option(False, "--wait/--no-wait", help="Wait until it is gone."),
    timeout: float = typer.Option(120.0, "--timeout", min=0, help="Seconds to wait."),
    poll: float = typer.Option(1.0, "--poll-interval", min=0, hidden=True),
) -> None:
    """Delete a deployment; its replicas are stopped."""
    api = client(ctx)
    api.deployments.delete(name)
    if not wait:
        output.out.print(Text(f"Deleting {name}: its replicas are being stopped."))
        return
    deadline = time.monotonic() + timeout
    with output.err.status(f"Stopping {name} ..."):
        while True:
            try:
                api.deployments.get(name)
            except NotFound:
                break
            if time.monotonic() >= deadline:
                raise Timeout(f"deployment {name!r} still exists after {timeout:g} s")
            time.sleep(poll)
    output.out.print(Text(f"Deleted {name}."))


def register(app: typer.Typer) -> None:
    app.command()(deploy)
    app.command()(scale)
    app.command()(autoscale)
    app.command()(history)
    app.command("ls")(ls)
    app.command()(status)
    app.command()(logs)
    app.command("rm")(rm)


# -- helpers ---------------------------------------------------------------------------


def _get_or_none(api: Client, name: str) -> DeploymentOut | None:
    try:
        return api.deployments.get(name)
    except NotFound:
        return None


def _wait_ready(api: Client, name: str, *, timeout_s: float, poll_s: float) -> DeploymentOut:
    """Wait with a spinner that shows the status and the latest event; every new event is
    also printed as a line on stderr."""
    seen: set[int] = set()
    with output.err.status(f"Waiting for {name} to become ready ...") as spinner:

        def progress(p: WaitProgress) -> None:
            for event in p.events:
                if event.id not in seen:
                    seen.add(event.id)
                    output.err.print(_event_line(event))
            d = p.deployment
            line = f"{name}: {d.status.value}, {d.ready_replicas}/{d.replicas} ready"
            if d.pending_reason:
                line += f" - {brief(d.pending_reason, 120)}"
            elif p.latest_event is not None:
                line += f" - {p.latest_event.reason}: {brief(p.latest_event.message, 120)}"
            spinner.update(Text(f"{line} ({p.elapsed_s:.0f}s)"))

        try:
            return api.deployments.wait_ready(
                name, timeout_s=timeout_s, poll_s=poll_s, on_progress=progress
            )
        except KeyboardInterrupt:
            note(f"Stopped waiting; {name} keeps starting (see `neocloud status {name}`).")
            raise


def _event_line(event: EventOut) -> Text:
    style = "yellow" if event.type == "warning" else "dim"
    return Text(f"  {event.reason}: {brief(event.message)}", style=style)


def _print_ready(api: Client, d: DeploymentOut, *, waited: bool) -> None:
    head = Text()
    if waited:
        head.append(f"{d.name} is {d.status.value}: ", style="bold green")
    else:
        head.append(f"{d.name}: {d.status.value}, ", style="bold")
    head.append(f"{d.ready_replicas}/{d.replicas} replicas ready")
    output.out.print(head)
    output.out.print(Text(f"  endpoint: {api.url}{d.endpoint}"))
    output.out.print(Text(f"  OpenAI:   base_url={api.url}/v1  model={d.name}"))


def _deployment_table(deployments: list[DeploymentOut]) -> Table:
    rows = [
        (
            d.name,
            d.engine.value,
            d.service or "-",
            _model_text(d),
            d.shape,
            f"{d.ready_replicas}/{d.replicas}",
            status_text(d.status.value),
            d.endpoint,
            age(d.created_at),
        )
        for d in deployments
    ]
    return table(("NAME", "ENGINE", "SERVICE", "MODEL", "SHAPE", "READY", "STATUS", "ENDPOINT",
                  "AGE"), rows)


def _model_text(d: DeploymentOut) -> str:
    """The model as ``ls``, ``status`` and the deployment's Created event name it:
    ``default`` when none was given (the service's or engine's own default model)."""
    return d.model or "default"


def _print_detail(api: Client, d: DeploymentOut, events: list[EventOut]) -> None:
    out = output.out
    title = Text(f"{d.name}  ", style="bold")
    title.append_text(status_text(d.status.value))
    out.print(title)
    fields = [
        ("engine", d.engine.value),
        ("service", d.service or "-"),
        ("model", _model_text(d)),
        ("shape", d.shape),
        ("replicas", f"{d.ready_replicas}/{d.replicas} ready"),
        ("generation", str(d.generation)),
        ("revision", str(d.revision)),
        ("endpoint", f"{api.url}{d.endpoint}"),
        ("created", f"{d.created_at.isoformat()} ({age(d.created_at)} ago)"),
    ]
    if d.autoscaling is not None:
        a = d.autoscaling
        fields.append(("autoscaling", f"{a.min_replicas}..{a.max_replicas}, target "
                                      f"{a.target:g} {a.signal.value} per replica"))
    if d.pending_reason:
        code = f"[{d.pending_code.value}] " if d.pending_code else ""
        fields.append(("pending", code + d.pending_reason))
    if d.env:
        fields.append(("env", " ".join(f"{k}={v}" for k, v in sorted(d.env.items()))))
    out.print(_kv_table(fields))
    if d.replica_list:
        replica_rows = [
            (
                r.id[:REPLICA_ID_CHARS],
                status_text(r.status.value),
                r.generation,
                r.node,
                ",".join(map(str, r.gpu_indices)) or "-",
                r.port,
                r.pid,
                r.restarts,
                brief(r.message, 160) if r.message else None,
            )
            for r in d.replica_list
        ]
        out.print()
        out.print(
            table(
                ("REPLICA", "STATUS", "GEN", "NODE", "GPUS", "PORT", "PID", "RESTARTS", "MESSAGE"),
                replica_rows,
                title="Replicas",
            )
        )
    if events:
        event_rows = [(age(e.created_at), e.type, e.reason, brief(e.message)) for e in events]
        out.print()
        out.print(table(("AGE", "TYPE", "REASON", "MESSAGE"), event_rows, title="Recent events"))


def _kv_table(fields: list[tuple[str, str]]) -> Table:
    tbl = table(("FIELD", "VALUE"), fields)
    tbl.show_header = False
    return tbl


def _summary(api: Client, json_out: bool) -> None:
    deployments = api.deployments.list()
    try:
        nodes: list[NodeOut] | None = api.nodes.list()
    except PermissionDenied:
        nodes = None
    if json_out:
        print_json({"deployments": deployments, "nodes": nodes or []})
        return
    out = output.out
    ready = sum(1 for d in deployments if d.status.value == "ready")
    out.print(Text(f"Deployments: {len(deployments)} ({ready} ready)", style="bold"))
    if deployments:
        out.print(_deployment_table(deployments))
    if nodes is None:
        return
    out.print()
    out.print(Text(f"Nodes: {len(nodes)}", style="bold"))
    if nodes:
        from neocloud.cli.inventory import node_table

        out.print(node_table(nodes))
