"""``neocloud node join`` on a real Ray cluster: the command starts a Ray node that joins,
registers it with a real control plane (HTTP on loopback), and the Ray backend then runs
work on that node by its name. A member token is refused before anything starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from neocloud.server.app import create_app
from neocloud.server.backends.base import WorkloadSpec
from neocloud.server.backends.fake import FakeBackend
from neocloud.server.bootstrap import bootstrap
from tests.backends.conftest import HAVE_RAY, NO_RAY, wait_for
from tests.backends.raycluster import own_args
from tests.server.helpers import make_settings

pytestmark = [pytest.mark.ray, pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)]

SLOT = 6  # 127.0.0.8: apart from the nodes the other tests start


@pytest.fixture
def control_plane(tmp_path: Path, live_server_factory: Any) -> tuple[str, str]:
    settings = make_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'cp.db'}")
    app = create_app(settings, backends={"fake": FakeBackend()}, run_reconcilers=False)
    srv = live_server_factory(app)
    boot = bootstrap(app.state.db)
    assert boot.token
    return srv.url, boot.token


def _join(url: str, token: str, cluster: Any, *extra: str) -> subprocess.Popen[str]:
    ip, base, temp = cluster.slot(SLOT)
    ray_args = [f"--ray-arg={a}" for a in own_args(base, temp)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEOCLOUD_")}
    env["NEOCLOUD_HOME"] = str(temp / "cli")
    cmd = [str(Path(sys.executable).with_name("neocloud")), "node", "join", url,
           "--token", token, "--ray-address", cluster.address, "--node-ip", ip,
           "--name", "gpu-a", *ray_args, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)


def test_join_then_run_there_then_leave(ray_cluster: Any, control_plane: tuple[str, str],
                                        tmp_path: Path) -> None:
    import ray

    from neocloud.server.backends.ray_backend import RayBackend

    url, token = control_plane
    proc = _join(url, token, ray_cluster, "--gpu", "T4:2:15360", "--labels", "zone=a",
                 "--pool", "east", "--price-per-hour", "0.9", "--block")
    try:
        api = httpx.Client(base_url=f"{url}/api/v1",
                           headers={"Authorization": f"Bearer {token}"})

        def registered() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read() if proc.stderr else "join exited")
            r = api.get("/nodes/gpu-a")
            return r.json() if r.status_code == 200 else None

        node = wait_for(registered, timeout_s=120, what="the node to register")
        assert node["backend"] == "ray" and node["pool"] == "east"
        assert len(node["gpus"]) == 2 and node["gpus"][0]["type"] == "T4"
        ray_id = node["labels"]["ray.io/node-id"]
        assert node["labels"]["zone"] == "a"
        ray_node = next(n for n in ray.nodes() if n["NodeID"] == ray_id)
        assert ray_node["Alive"] and ray_node["Resources"]["GPU"] == 2
        assert ray_node["Labels"]["neocloud.io/node"] == "gpu-a"
        assert ray_node["NodeManagerAddress"] == ray_cluster.slot(SLOT)[0]

        be = RayBackend(ray_cluster.address, node_ip="127.0.0.2")
        spec = WorkloadSpec(workload_id="joined-1",
                            command=[sys.executable, "-c", "print('on gpu-a')"],
                            log_path=tmp_path / "j.log", node_name="gpu-a",
                            node_address=ray_cluster.slot(SLOT)[0], gpu_indices=(1,))
        h = be.start(spec)
        assert h["node_id"] == ray_id
        wait_for(lambda: not be.inspect(h).running, what="exit")
        assert "on gpu-a" in be.logs(h)
        be.stop(h, grace_s=1)
        be.close()
    finally:
        proc.send_signal(signal.SIGTERM)  # stops its Ray node too
        out, err = proc.communicate(timeout=60)
    assert "Joined node gpu-a" in out and ray_id in out, out + err
    assert proc.returncode == 0, err
    wait_for(lambda: not next(n for n in ray.nodes() if n["NodeID"] == ray_id)["Alive"],
             timeout_s=60, what="the Ray node to leave")


def test_member_token_is_refused_before_ray_starts(
        ray_cluster: Any, control_plane: tuple[str, str]) -> None:
    import ray

    url, token = control_plane
    r = httpx.post(f"{url}/api/v1/workspaces/default/tokens", json={"name": "m",
                   "role": "member"}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201, r.text
    before = sum(1 for n in ray.nodes() if n["Alive"])
    proc = _join(url, r.json()["token"], ray_cluster, "--json")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert "operator token" in err and "Traceback" not in err
    time.sleep(1)
    assert sum(1 for n in ray.nodes() if n["Alive"]) == before
    nodes = httpx.get(f"{url}/api/v1/nodes", headers={"Authorization": f"Bearer {token}"})
    assert json.loads(nodes.text)["data"] == []
