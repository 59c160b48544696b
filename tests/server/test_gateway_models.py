"""The gateway's OpenAI model objects (``GET /v1/models``, ``GET /v1/models/{name}``) give
``created`` as the deployment's creation time in Unix seconds and ``owned_by`` as the name
of its workspace, as OpenAI's model object does (they were ``0`` and the workspace's hex
id)."""

from __future__ import annotations

import time
from datetime import datetime

from tests.server.helpers import Cloud


def test_model_objects_give_the_creation_time_and_the_workspace_name(cloud: Cloud) -> None:
    token = cloud.new_workspace("acme")
    before = int(time.time())
    r = cloud.api("POST", "/deployments", token=token,
                  json={"name": "emb", "service": "embeddings", "replicas": 0})
    assert r.status_code == 201, r.text
    created = int(datetime.fromisoformat(r.json()["created_at"]).timestamp())
    cloud.app.state.routes.refresh()
    h = cloud.h(token)
    listed = cloud.client.get("/v1/models", headers=h).json()["data"]
    one = cloud.client.get("/v1/models/emb", headers=h).json()
    assert [m["id"] for m in listed] == ["emb"]
    for model in (listed[0], one):
        assert (model["object"], model["owned_by"], model["created"]) == (
            "model", "acme", created)
    assert before - 1 <= created <= int(time.time())
