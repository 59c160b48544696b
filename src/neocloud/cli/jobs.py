"""``neocloud job``: create, status, logs, stop, ls, rm."""

from __future__ import annotations

import sys
import time

import typer
from rich.text import Text

from neocloud.cli import output
from neocloud.cli.context import client
from neocloud.cli.follow import new_lines
from neocloud.cli.output import age, note, print_json, table
from neocloud.cli.params import check_fields, parse_pairs
from neocloud.errors import NotFound
from neocloud.models.jobs import JobCreate, JobOut, JobStatus
from neocloud.sdk import Client

app = typer.Typer(help="Batch and training jobs: 1..N workers, retries, logs.",
                  no_args_is_help=True)
JSON_HELP = "Print JSON to stdout instead of a table."
_OPTIONS = {"name": "NAME", "command": "COMMAND", "shape": "--shape", "workers": "--workers",
            "env": "--env", "secrets": "--secret", "volumes": "--volume",
            "max_retries": "--max-retries", "time_limit_s": "--time-limit",
            "priority": "--priority"}
_STYLES = {"queued": "yellow", "running": "green", "succeeded": "green",
           "retrying": "yellow", "stopped": "dim"}


def status_text(value: str) -> Text:
    """A job or pod status word coloured by its meaning."""
    return Text(value, style=_STYLES.get(value) or output.STATUS_STYLES.get(value, ""))


def parse_mounts(values: list[str] | None, *, option: str = "--volume") -> list[dict[str, str]]:
    """``["data:/data"]`` -> ``[{"volume": "data", "path": "/data"}]``.

    Raises:
        typer.BadParameter: an item is not ``VOLUME:PATH``.
    """
    out = []
    for item in values or ():
        volume, sep, path = item.partition(":")
        if not sep or not volume or not path:
            raise typer.BadParameter(f"expected VOLUME:PATH, got {item!r}",
                                     param_hint=f"'{option}'")
        out.append({"volume": volume, "path": path})
    return out


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Job name."),
    command: list[str] = typer.Argument(..., help="Command and arguments (after --)."),
    workers: int = typer.Option(1, "--workers", "-n", min=1, max=256,
                                help="Workers, placed all at once (gang)."),
    shape: str = typer.Option("cpu.small", "--shape", help="Resources of each worker."),
    env: list[str] | None = typer.Option(None, "--env", "-e", help="KEY=VALUE (repeatable)."),
    secret: list[str] | None = typer.Option(
        None, "--secret", help="ENV=SECRET: set ENV from a workspace secret (repeatable)."),
    volume: list[str] | None = typer.Option(
        None, "--volume", "-v", help="VOLUME:PATH: mount a volume (repeatable)."),
    max_retries: int = typer.Option(0, "--max-retries", min=0, max=100,
                                    help="Retries of a failed attempt (with back-off)."),
    time_limit: float | None = typer.Option(None, "--time-limit", min=0.001,
                                            help="Seconds an attempt may run."),
    priority: int = typer.Option(0, "--priority", min=-1000, max=1000),
    preemptible: bool = typer.Option(False, "--preemptible",
                                     help="Higher-priority work may stop and requeue it."),
    wait: bool = typer.Option(False, "--wait", help="Wait until it ends; exit 1 unless it "
                                                    "succeeded."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Create a job: neocloud job create NAME [OPTIONS] -- COMMAND [ARGS...]"""
    env_map = parse_pairs(env, option="--env")
    secret_map = parse_pairs(secret, option="--secret")
    mounts = parse_mounts(volume)
    fields = dict(name=name, command=command, shape=shape, workers=workers, env=env_map,
                  secrets=secret_map, volumes=mounts, max_retries=max_retries,
                  time_limit_s=time_limit, priority=priority)
    check_fields(JobCreate, fields, _OPTIONS)
    api = client(ctx)
    job = api.jobs.create(name, command, shape=shape, workers=workers, env=env_map,
                          secrets=secret_map, volumes=[f"{m['volume']}:{m['path']}"
                                                       for m in mounts],
                          max_retries=max_retries, time_limit_s=time_limit,
                          priority=priority, preemptible=preemptible)
    output.print_warnings(job.warnings)
    if not json_out:
        note(f"Created job {name}: {workers} x {shape}; status {job.status.value}.")
    if wait:
        job = _wait(api, name)
    if json_out:
        print_json(job)
    elif wait:
        _print_job(job)
    if wait and job.status.value != "succeeded":
        raise typer.Exit(1)


def _wait(api: Client, name: str) -> JobOut:
    last = ""
    with output.err.status(f"Waiting for job {name} ...") as spinner:
        def poll(job: JobOut) -> None:
            nonlocal last
            line = f"{job.status.value}" + (f": {job.reason}" if job.reason else "")
            if line != last:
                spinner.update(f"Job {name}: {line}")
                last = line
        return api.jobs.wait(name, poll_s=0.5, on_poll=poll)


@app.command("status")
def status(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Job name."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """State, reason, attempts and per-worker exit codes of a job."""
    job = client(ctx).jobs.get(name)
    if json_out:
        print_json(job)
        return
    _print_job(job)


def _print_job(job: JobOut) -> None:
    head = Text(f"{job.name}  ", style="bold")
    head.append_text(status_text(job.status.value))
    output.out.print(head)
    # retried while failures <= max_retries: so many retries used of those allowed
    used = min(job.failures, job.max_retries)
    retries = (f"  retries {used}/{job.max_retries} ({job.failures} failed)"
               if job.max_retries else "")
    output.out.print(Text(f"command: {' '.join(job.command)}"))
    output.out.print(Text(f"workers: {job.workers} x {job.shape}   attempt {job.attempt}"
                          f"{retries}   created {age(job.created_at)} ago"))
    if job.reason:
        output.out.print(Text(f"reason:  {job.reason}"))
    if job.exit_code is not None:
        output.out.print(Text(f"exit code: {job.exit_code}"))
    if job.worker_list:
        rows = [(w.rank, status_text(w.status.value), w.node, w.pid, w.exit_code,
                 ",".join(map(str, w.gpu_indices)) or "-") for w in job.worker_list]
        output.out.print(table(("WORKER", "STATUS", "NODE", "PID", "EXIT", "GPUS"), rows))
    if job.message and job.status.value in ("failed", "retrying"):
        output.out.print(Text("last log lines:", style="bold"))
        output.out.print(Text(job.message))


@app.command("ls")
def ls(ctx: typer.Context, json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
       ) -> None:
    """Jobs of the workspace."""
    jobs = client(ctx).jobs.list()
    if json_out:
        print_json(jobs)
        return
    rows = [(j.name, status_text(j.status.value), f"{j.workers} x {j.shape}", j.attempt,
             j.exit_code, age(j.created_at), j.reason) for j in jobs]
    output.out.print(table(("NAME", "STATUS", "WORKERS", "ATTEMPT", "EXIT", "AGE", "REASON"),
                           rows))


@app.command("logs")
def logs(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Job name."),
    worker: int | None = typer.Option(None, "--worker", "-w", min=0,
                                      help="One worker's output (default: all)."),
    attempt: int | None = typer.Option(None, "--attempt", min=1,
                                       help="Attempt (default: the latest)."),
    tail: int | None = typer.Option(None, "--tail", min=0, help="Only the last N lines."),
    follow_: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines "
                                                               "until the job ends."),
    interval: float = typer.Option(1.0, "--interval", min=0.05, hidden=True),
) -> None:
    """Output of a job's workers (kept after the job ends)."""
    api = client(ctx)
    if not follow_:
        sys.stdout.write(api.jobs.logs(name, worker=worker, attempt=attempt, tail=tail))
        sys.stdout.flush()
        return
    window: list[str] = []
    first = True
    waiting: tuple[str, str | None] | None = None
    while True:
        job = api.jobs.get(name)
        waiting = _say_waiting(job, waiting)
        text = api.jobs.logs(name, worker=worker, attempt=attempt, tail=None if first else 1000)
        lines = text.splitlines()
        fresh = lines[-tail:] if (first and tail is not None) else (
            lines if first else new_lines(window, lines))
        for line in fresh:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
        window, first = lines[-1000:], False
        if job.status.finished:
            note(f"job {name} {job.status.value}")
            return
        time.sleep(interval)


#: Job statuses in which no worker runs yet: ``logs -f`` says it waits, with the reason.
_WAITING = (JobStatus.queued, JobStatus.retrying)


def _say_waiting(job: JobOut, said: tuple[str, str | None] | None
                 ) -> tuple[str, str | None] | None:
    """While ``job`` waits to (re)start, print on stderr that ``logs -f`` is waiting and
    why (again only when the status or reason changes), then once that it started;
    returns what was said (``None`` once it runs)."""
    if job.status in _WAITING:
        now = (job.status.value, job.reason)
        if now != said:
            why = f": {job.reason}" if job.reason else ""
            note(f"job {job.name} is {job.status.value}{why}; waiting for it to start "
                 "(Ctrl-C to stop following)")
        return now
    if said is not None and not job.status.finished:
        note(f"job {job.name} is {job.status.value}; following its logs")
    return None


@app.command("stop")
def stop(ctx: typer.Context, name: str = typer.Argument(..., help="Job name.")) -> None:
    """Stop a job (its workers get SIGTERM, then SIGKILL); logs are kept."""
    job = client(ctx).jobs.stop(name)
    note(f"Job {name}: {job.status.value}.")


@app.command("rm")
def rm(ctx: typer.Context, name: str = typer.Argument(..., help="Job name."),
       force: bool = typer.Option(False, "--force", help="No error if it does not exist."),
       ) -> None:
    """Delete a finished job and its logs."""
    try:
        client(ctx).jobs.delete(name)
    except NotFound:
        if not force:
            raise
    note(f"Deleted job {name}.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="job")
