"""``deploy --dry-run`` gives the warnings the real deploy gives.

Found: ``deploy e2 --env OPENAI_API_KEY=... --dry-run`` printed no warning about the
sensitive value in ``env``, while the real deploy warned (suggesting ``--secret``). The
dry-run answer now carries the same ``warnings`` and the CLI prints them.
"""

from __future__ import annotations

import pytest

from neocloud.cli import output
from tests.server.helpers import Cloud
from tests.server.test_secrets_leak import run_cli

KEY = "sk-" + "q" * 40


def test_dry_run_warns_like_the_real_create(cloud: Cloud,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output.err, "width", 300)
    cloud.add_fake_node("cpu-1")
    body = {"name": "e2", "service": "embeddings",
            "env": {"OPENAI_API_KEY": KEY, "LOG_LEVEL": "debug"}}
    plan = cloud.api("POST", "/deployments?dry_run=true", json=body)
    assert plan.status_code == 200, plan.text
    assert cloud.api("GET", "/deployments").json()["data"] == []
    out = run_cli(cloud, "deploy", "e2", "--service", "embeddings", "--env",
                  f"OPENAI_API_KEY={KEY}", "--dry-run")
    assert "Warning: env OPENAI_API_KEY looks like a secret" in out, out
    assert "--secret OPENAI_API_KEY=" in out and "Fits:" in out
    assert KEY not in out
    real = cloud.api("POST", "/deployments", json=body)
    assert real.status_code == 201, real.text
    assert plan.json()["warnings"] == real.json()["warnings"] != []


def test_dry_run_of_a_plain_env_has_no_warnings(cloud: Cloud) -> None:
    cloud.add_fake_node("cpu-1")
    plan = cloud.api("POST", "/deployments?dry_run=true",
                     json={"name": "e3", "service": "embeddings", "env": {"A": "1"}})
    assert plan.status_code == 200 and plan.json()["warnings"] == []
