from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

# The fake control plane is shared with the SDK tests.
sys.path.insert(0, str(Path(__file__).parents[1] / "sdk"))

from fakecloud import ADMIN_TOKEN, BASE, FakeCloud  # noqa: E402

from neocloud.cli import output  # noqa: E402
from neocloud.cli.context import CliState  # noqa: E402
from neocloud.cli.main import app  # noqa: E402

Run = Callable[..., Result]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("NEOCLOUD_HOME", str(home))
    monkeypatch.delenv("NEOCLOUD_URL", raising=False)
    monkeypatch.delenv("NEOCLOUD_TOKEN", raising=False)
    # Wide consoles, so table cells are not folded in assertions.
    monkeypatch.setattr(output.out, "width", 200)
    monkeypatch.setattr(output.err, "width", 200)
    return home


@pytest.fixture
def cloud() -> FakeCloud:
    return FakeCloud()


@pytest.fixture
def run(cloud: FakeCloud) -> Run:
    """Invoke the CLI against the fake cloud; ``login=False`` leaves URL and token to the
    command line, the environment and the config file."""

    def invoke(*args: str, login: bool = True, env: dict[str, str] | None = None) -> Result:
        state = CliState(transport=cloud.transport)
        if login:
            state.url, state.token = BASE, ADMIN_TOKEN
        return CliRunner().invoke(app, list(args), obj=state, env=env, catch_exceptions=False)

    return invoke
