"""``neocloud volume``: create, ls, upload, download, rm (with progress bars)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from neocloud.cli import output
from neocloud.cli.context import client
from neocloud.cli.output import age, note, print_json, table

app = typer.Typer(help="Workspace volumes: files mounted into jobs and pods.",
                  no_args_is_help=True)


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB`` (binary units)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int, int], None]]:
    """A Rich transfer bar on stderr; yields ``update(done_bytes, total_bytes)``."""
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=output.err,
                  transient=False) as bar:
        task = bar.add_task(label, total=total or None)

        def update(done: int, of: int) -> None:
            bar.update(task, completed=done, total=of or None)

        yield update


@app.command("create")
def create(ctx: typer.Context, name: str = typer.Argument(..., help="Volume name.")) -> None:
    """Create an empty volume."""
    client(ctx).volumes.create(name)
    note(f"Created volume {name}.")


@app.command("ls")
def ls(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="A volume: list its files."),
    path: str = typer.Argument("", help="Only under this path."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON to stdout."),
) -> None:
    """Volumes of the workspace, or every file of one volume (all pages of the listing)."""
    api = client(ctx)
    if name is None:
        vols = api.volumes.list()
        if json_out:
            print_json(vols)
            return
        rows = [(v.name, human_bytes(v.size_bytes), v.file_count,
                 ", ".join(v.mounted_by) or "-", f"{age(v.created_at)} ago") for v in vols]
        output.out.print(table(("NAME", "SIZE", "FILES", "MOUNTED BY", "CREATED"), rows))
        return
    files = api.volumes.files(name, path)
    if json_out:
        print_json(files)
        return
    file_rows = [(f.path + ("/" if f.is_dir else ""),
                  "-" if f.is_dir else human_bytes(f.size_bytes),
                  f.modified_at.strftime("%Y-%m-%d %H:%M:%S")) for f in files]
    output.out.print(table(("PATH", "SIZE", "MODIFIED (UTC)"), file_rows))


@app.command("upload")
def upload(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Volume name."),
    local: Path = typer.Argument(..., exists=True, help="A local file or folder."),
    path: str | None = typer.Argument(None, help="Where in the volume (default: the "
                                                 "file or folder name)."),
) -> None:
    """Upload a file, or a folder with everything in it, streamed with a progress bar."""
    api = client(ctx)
    target = (path or local.name).strip("/")
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.is_file())
        pairs = [(p, f"{target}/{p.relative_to(local).as_posix()}") for p in files]
    else:
        pairs = [(local, target)]
    total = 0
    for src, dest in pairs:
        with progress_bar(dest, src.stat().st_size) as update:
            api.volumes.upload(name, src, dest, progress=update)
        total += src.stat().st_size
    note(f"Uploaded {len(pairs)} file(s), {human_bytes(total)}, to volume {name}.")


@app.command("download")
def download(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Volume name."),
    path: str = typer.Argument(..., help="File in the volume."),
    local: Path = typer.Argument(Path("."), help="Local file or folder (default: here)."),
) -> None:
    """Download a file, streamed with a progress bar."""
    api = client(ctx)
    with progress_bar(path, 0) as update:
        dest = api.volumes.download(name, path, local, progress=update)
    note(f"Downloaded {path} to {dest} ({human_bytes(dest.stat().st_size)}).")


@app.command("rm")
def rm(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Volume name."),
    path: str | None = typer.Argument(None, help="Remove only this file or folder."),
) -> None:
    """Delete a volume with its files, or one file or folder in it."""
    api = client(ctx)
    if path:
        api.volumes.remove(name, path)
        note(f"Removed {path} from volume {name}.")
    else:
        api.volumes.delete(name)
        note(f"Deleted volume {name}.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="volume")
