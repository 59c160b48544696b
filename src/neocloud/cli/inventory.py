"""Inventory commands: ``node ls|add|cordon|uncordon|rm``, ``shape ls|add`` and
``utilization``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import typer
from rich.table import Table
from rich.text import Text

from neocloud.cli import output
from neocloud.cli.context import client
from neocloud.cli.output import age, print_json, status_text, table
from neocloud.cli.params import check_fields, parse_gpu, parse_labels
from neocloud.cli.prices import list_price_micros, usd6
from neocloud.errors import NotFound
from neocloud.models import NodeCreate, NodeOut, ShapeCreate, ShapeOut
from neocloud.models.billing import PriceKind, PriceOut

JSON_HELP = "Print JSON to stdout instead of a table."

node_app = typer.Typer(help="Nodes: the servers that run work.", no_args_is_help=True)
shape_app = typer.Typer(help="Shapes: resource requests with a price.", no_args_is_help=True)


def node_table(nodes: Sequence[NodeOut]) -> Table:
    """Nodes with allocated/total CPU (cores), memory (GiB) and GPUs."""
    rows = []
    for n in nodes:
        gpus = _gpu_summary(n)
        rows.append(
            (
                n.name,
                status_text(n.status.value),
                n.backend,
                n.pool,
                f"{n.allocated_cpu_milli / 1000:g}/{n.cpu_milli / 1000:g}",
                f"{n.allocated_memory_mib / 1024:.1f}/{n.memory_mib / 1024:.1f}",
                gpus,
                age(n.created_at),
            )
        )
    return table(
        ("NAME", "STATUS", "BACKEND", "POOL", "CPU USED/ALL", "MEM GiB", "GPUS", "AGE"), rows
    )


def _gpu_summary(node: NodeOut) -> str:
    if not node.gpus:
        return "-"
    by_type: dict[str, list[int]] = {}
    for gpu in node.gpus:
        by_type.setdefault(gpu.type, []).append(gpu.allocated_milli)
    parts = []
    for gpu_type, allocated in by_type.items():
        busy = sum(allocated) / 1000
        parts.append(f"{busy:g}/{len(allocated)}x{gpu_type}")
    return " ".join(parts)


@node_app.command("ls")
def node_ls(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List nodes."""
    nodes = client(ctx).nodes.list()
    if json_out:
        print_json(nodes)
        return
    output.out.print(node_table(nodes))


@node_app.command("add")
def node_add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Node name."),
    cpu_milli: int = typer.Option(..., "--cpu-milli", min=1, help="CPU in millicores."),
    memory_mib: int = typer.Option(..., "--memory-mib", min=1, help="Memory in MiB."),
    gpu: list[str] | None = typer.Option(
        None, "--gpu", help="GPUs as TYPE:COUNT:MEMORY_MIB, e.g. H100:8:81559 (repeatable)."
    ),
    label: list[str] | None = typer.Option(None, "--label", help="KEY=VALUE (repeatable)."),
    pool: str | None = typer.Option(None, "--pool", help="Node pool name."),
    backend: str | None = typer.Option(
        None, "--backend", help="local, ray or fake (default: the server's)."
    ),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Register a node (operators)."""
    gpus = [parse_gpu(g, option="--gpu") for g in gpu or ()]
    labels = parse_labels(label, option="--label") if label else None
    check_fields(
        NodeCreate,
        dict(
            name=name,
            cpu_milli=cpu_milli,
            memory_mib=memory_mib,
            gpus=[g.model_dump() for g in gpus],
            labels=labels,
            pool=pool,
            backend=backend,
        ),
        {
            "name": "NAME",
            "gpus": "--gpu",
            "labels": "--label",
            "pool": "--pool",
            "backend": "--backend",
        },
    )
    node = client(ctx).nodes.create(
        name,
        cpu_milli=cpu_milli,
        memory_mib=memory_mib,
        gpus=gpus,
        labels=labels,
        pool=pool,
        backend=backend,
    )
    if json_out:
        print_json(node)
        return
    output.out.print(node_table([node]))


@node_app.command("cordon")
def node_cordon(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Node name."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Stop placing new work on a node (its running work stays)."""
    node = client(ctx).nodes.cordon(name)
    _done(node, f"Cordoned {name}.", json_out)


@node_app.command("uncordon")
def node_uncordon(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Node name."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Let a node take new work again."""
    node = client(ctx).nodes.uncordon(name)
    _done(node, f"Uncordoned {name}.", json_out)


@node_app.command("rm")
def node_rm(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Node name."),
) -> None:
    """Remove a node (operators)."""
    client(ctx).nodes.delete(name)
    output.out.print(Text(f"Removed node {name}."))


def _done(node: NodeOut, message: str, json_out: bool) -> None:
    if json_out:
        print_json(node)
    else:
        output.out.print(Text(message))


OVERRIDE_MARK = "*"
"""Marks a USD/HOUR that a price version sets (not the shape's own list price)."""


def _utc(when: datetime) -> datetime:
    """``when`` as an aware UTC time (a naive one is taken as UTC)."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def billed_prices(shapes: Sequence[ShapeOut], versions: Sequence[PriceOut],
                  now: datetime) -> dict[str, PriceOut]:
    """The shape price version in force at ``now`` of each of ``shapes`` that has one: its
    latest version effective at or before ``now``, which bills the shape's running time
    instead of its own list price (as the server prices it, and as ``neocloud price ls``
    lists it). Shapes without one are left out (billed at their list price)."""
    names = {s.name for s in shapes}
    out: dict[str, PriceOut] = {}
    for p in versions:
        if p.kind is not PriceKind.shape or p.target not in names:
            continue
        at = _utc(p.effective_at)
        if at <= now and (p.target not in out or at > _utc(out[p.target].effective_at)):
            out[p.target] = p
    return out


def shape_table(shapes: Sequence[ShapeOut],
                in_force: Mapping[str, PriceOut] | None = None) -> Table:
    """Shapes with CPU (cores), memory (GiB), GPUs and the price per hour that is billed,
    printed as ``neocloud price ls`` prints amounts (at least 2 decimals: ``$1.10``,
    ``$20.00``): a shape's own list price, or where ``in_force`` holds a price version of
    it (see :func:`billed_prices`) that version's price, marked ``*``."""
    in_force = in_force or {}
    rows = []
    for s in shapes:
        if s.gpu_count:
            gpu = f"{s.gpu_count}"
        elif s.gpu_milli:
            gpu = f"{s.gpu_milli / 1000:g}"
        else:
            gpu = "-"
        version = in_force.get(s.name)
        price = (usd6(list_price_micros(s)) if version is None
                 else usd6(version.per_hour_micros) + OVERRIDE_MARK)
        rows.append(
            (
                s.name,
                f"{s.cpu_milli / 1000:g}",
                f"{s.memory_mib / 1024:g}",
                gpu,
                s.gpu_type or ("any" if gpu != "-" else "-"),
                price,
            )
        )
    return table(("NAME", "CPUS", "MEM GiB", "GPUS", "GPU TYPE", "USD/HOUR"), rows)


def override_note(shapes: Sequence[ShapeOut], in_force: Mapping[str, PriceOut]) -> str | None:
    """The line under ``shape ls`` that explains :data:`OVERRIDE_MARK`: which list prices
    the versions in force replace; ``None`` when no shape has one."""
    replaced = [f"{s.name} {usd6(list_price_micros(s))}" for s in shapes if s.name in in_force]
    if not replaced:
        return None
    return (f"{OVERRIDE_MARK} billed at the price version in force, not the shape's own list "
            f"price ({', '.join(replaced)}); `neocloud price ls` lists every version.")


@shape_app.command("ls")
def shape_ls(
    ctx: typer.Context,
    json_out: bool = typer.Option(
        False, "--json",
        help="Print the shapes as JSON (price_per_hour_usd is each shape's own list price; "
             "the versions that replace it are in `neocloud price ls --json`)."),
) -> None:
    """List shapes and the price per hour their running time is billed at now (billed per
    second): the price version in force, marked *, or else the shape's own list price."""
    api = client(ctx)
    shapes = api.shapes.list()
    if json_out:
        print_json(shapes)
        return
    try:
        versions = api.prices.list(kind=PriceKind.shape)
    except NotFound:  # a server older than price versions bills every shape's list price
        versions = []
    in_force = billed_prices(shapes, versions, datetime.now(UTC))
    output.out.print(shape_table(shapes, in_force))
    note = override_note(shapes, in_force)
    if note:
        output.out.print(Text(note))


@shape_app.command("add")
def shape_add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Shape name, e.g. gpu.l4."),
    cpu_milli: int = typer.Option(..., "--cpu-milli", min=1, help="CPU in millicores."),
    memory_mib: int = typer.Option(..., "--memory-mib", min=1, help="Memory in MiB."),
    gpus: int = typer.Option(0, "--gpus", min=0, max=64, help="Whole GPUs."),
    gpu_milli: int = typer.Option(
        0, "--gpu-milli", min=0, max=999, help="Thousandths of one GPU (fractional shape)."
    ),
    gpu_type: str | None = typer.Option(None, "--gpu-type", help="GPU model, e.g. H100."),
    price: float = typer.Option(..., "--price", min=0, help="Price in USD per hour."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Add a shape (operators)."""
    if gpus and gpu_milli:
        raise typer.BadParameter("use --gpus or --gpu-milli, not both", param_hint="'--gpu-milli'")
    check_fields(
        ShapeCreate,
        dict(
            name=name,
            cpu_milli=cpu_milli,
            memory_mib=memory_mib,
            gpu_count=gpus,
            gpu_milli=gpu_milli,
            gpu_type=gpu_type,
            price_per_hour_usd=price,
        ),
        {"name": "NAME", "gpu_type": "--gpu-type"},
    )
    shape = client(ctx).shapes.create(
        name,
        cpu_milli=cpu_milli,
        memory_mib=memory_mib,
        price_per_hour_usd=price,
        gpu_count=gpus,
        gpu_milli=gpu_milli,
        gpu_type=gpu_type,
    )
    if json_out:
        print_json(shape)
        return
    output.out.print(shape_table([shape]))


def utilization(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Capacity and allocation of the fleet, per node pool and GPU type."""
    u = client(ctx).fleet.utilization()
    if json_out:
        print_json(u)
        return
    rows = [(p.pool, p.gpu_type, p.nodes, f"{p.allocated_gpus:g}/{p.gpus}",
             f"{p.allocated_cpu_milli / 1000:g}/{p.cpu_milli / 1000:g}",
             f"{p.allocated_memory_mib / 1024:.0f}/{p.memory_mib / 1024:.0f}")
            for p in u.pools]
    output.out.print(table(("POOL", "GPU TYPE", "NODES", "GPUS", "CPUS", "MEMORY GiB"), rows,
                           title=f"GPU allocation {u.gpu_allocation_pct:.1f} %"))


def register(app: typer.Typer) -> None:
    app.add_typer(node_app, name="node")
    app.add_typer(shape_app, name="shape")
    app.command()(utilization)
