"""The client itself against the real control plane: token and paths, errors rebuilt as
the server's classes, local validation, and failures of the connection."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import httpx
import pytest
from tests.unit.sdk.realcloud import BASE, RealCloud

import neocloud
from neocloud import errors
from neocloud.sdk import Client


def test_requests_carry_token_and_base_path(client: Client, cloud: RealCloud) -> None:
    me = client.whoami()
    assert me.workspace.name == "default" and me.workspace.operator
    assert me.token.name.startswith("admin")
    request = cloud.requests[-1]
    assert request.url == httpx.URL(f"{BASE}/api/v1/whoami")
    assert request.headers["authorization"] == f"Bearer {cloud.token}"


def test_server_errors_come_back_as_the_same_classes(client: Client) -> None:
    with pytest.raises(errors.NotFound, match="deployment 'nope' not found"):
        client.deployments.get("nope")
    client.deployments.create("web", "embeddings", replicas=0)
    with pytest.raises(errors.AlreadyExists) as info:
        client.deployments.create("web", "embeddings")
    assert info.value.param == "name" and info.value.code == "already_exists"
    with pytest.raises(errors.NotFound, match="gpu.zz") as shape_info:
        client.deployments.create("other", "embeddings", shape="gpu.zz")
    assert shape_info.value.param == "shape"
    with pytest.raises(errors.InvalidRequest) as ref:
        client.deployments.create("third", "not a ref")
    assert ref.value.param == "service" and type(ref.value) is errors.InvalidRequest


def test_bad_token_and_missing_token(cloud: RealCloud) -> None:
    with pytest.raises(errors.Unauthenticated, match="invalid API token"):
        cloud.client("wrong").deployments.list()
    anonymous = cloud.client(None)
    assert anonymous.token is None
    with pytest.raises(errors.Unauthenticated, match="neocloud up"):
        anonymous.whoami()
    assert "authorization" not in cloud.requests[-1].headers


def test_viewer_cannot_write(client: Client, cloud: RealCloud) -> None:
    viewer = cloud.client(client.tokens.create("ro", "viewer").token)
    assert viewer.deployments.list() == []
    with pytest.raises(errors.PermissionDenied, match="member"):
        viewer.deployments.create("web", "embeddings")


def test_local_validation_fails_before_sending(client: Client, cloud: RealCloud) -> None:
    sent = len(cloud.requests)
    with pytest.raises(errors.ValidationFailed) as info:
        client.deployments.create("web", "embeddings", replicas=-1)
    assert info.value.param == "body.replicas"
    assert "greater than or equal to 0" in info.value.message
    with pytest.raises(errors.ValidationFailed) as name_info:
        client.deployments.create("Bad_Name", "embeddings")
    assert name_info.value.param == "body.name"
    with pytest.raises(errors.ValidationFailed, match="gpu_count or gpu_milli"):
        client.shapes.create("x", cpu_milli=1, memory_mib=1, price_per_hour_usd=1,
                             gpu_count=1, gpu_milli=500)
    assert len(cloud.requests) == sent


def test_connection_refused_names_url_and_suggests_up() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with Client(url, "t", timeout=5) as c, pytest.raises(errors.Unavailable) as info:
        c.deployments.list()
    assert url in info.value.message and "neocloud up" in info.value.message


def test_timeouts_and_non_json_answers() -> None:
    # A misbehaving server cannot be asked of the real app: these answers are scripted.
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/whoami"):
            raise httpx.ReadTimeout("slow", request=request)
        if request.url.path.endswith("/usage"):
            return httpx.Response(502, text="<html>Bad Gateway</html>")
        return httpx.Response(200, text="not json")

    with Client(BASE, "t", timeout=2.5, transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(errors.Timeout, match="2.5 s"):
            c.whoami()
        with pytest.raises(errors.UpstreamError, match="Bad Gateway"):
            c.usage.bill()
        with pytest.raises(errors.UpstreamError, match="unexpected answer to GET"):
            c.deployments.list()


def test_openai_client_points_at_gateway(client: Client, cloud: RealCloud) -> None:
    oa = client.openai(max_retries=0)
    assert str(oa.base_url) == f"{BASE}/v1/"
    assert oa.api_key == cloud.token
    assert oa.max_retries == 0


def test_import_neocloud_is_light_and_exports_client() -> None:
    code = (
        "import sys, json, neocloud; before = 'httpx' in sys.modules;"
        "c = neocloud.Client; print(json.dumps([before, c.__module__]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [False, "neocloud.sdk.client"]
    assert neocloud.Client is Client
    with pytest.raises(AttributeError):
        _ = neocloud.NoSuchThing  # type: ignore[attr-defined]
