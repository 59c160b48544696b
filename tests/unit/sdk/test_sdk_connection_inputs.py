"""Connection settings as users write them (each case was a bare or silent failure):

- a URL that already ends in the REST prefix (``NEOCLOUD_URL=http://host:port/api/v1``)
  reaches the same control plane (before: every call answered a bare "Not Found");
- a URL with any other wrong path gets a 404 that names the URL and what it must be;
- an empty ``NEOCLOUD_TOKEN=`` / ``NEOCLOUD_URL=`` counts as unset, like every other
  empty setting: the config file decides (documented in :mod:`neocloud.config`).
"""

from __future__ import annotations

import pytest
from tests.unit.sdk.realcloud import BASE, RealCloud

from neocloud import config
from neocloud.errors import NotFound
from neocloud.sdk import Client


@pytest.mark.parametrize("suffix", ["/api/v1", "/api/v1/", "/API/V1"])
def test_url_ending_in_the_api_prefix_is_the_same_control_plane(
        cloud: RealCloud, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    monkeypatch.setenv("NEOCLOUD_URL", BASE + suffix)
    with Client(token=cloud.token, transport=cloud.transport) as c:
        assert c.url == BASE
        assert c.whoami().workspace.name == "default"
    assert cloud.requests[-1].url.path == "/api/v1/whoami"
    assert config.resolve(BASE + suffix).url == BASE
    assert config.resolve("http://h:8700/proxy/api/v1").url == "http://h:8700/proxy"


@pytest.mark.parametrize("path", ["/v1", "/api/v1/api/v1"])
def test_a_url_with_another_path_gets_a_404_naming_the_url(cloud: RealCloud, path: str) -> None:
    with Client(BASE + path, cloud.token, transport=cloud.transport) as c, \
            pytest.raises(NotFound) as exc:
        c.whoami()
    message = str(exc.value)
    assert exc.value.param == "url"
    sent = config.base_url(path) + "/api/v1/whoami"
    assert message.startswith(f"GET {sent}: no such API route at {BASE}{config.base_url(path)}")
    assert "must be the control plane's base URL" in message
    with Client(BASE, cloud.token, transport=cloud.transport) as c, \
            pytest.raises(NotFound) as exc:
        c.deployments.get("nothing-here")  # a missing resource keeps its own message
    assert "base URL" not in str(exc.value) and exc.value.param != "url"


def test_empty_environment_values_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEOCLOUD_TOKEN", "")
    monkeypatch.setenv("NEOCLOUD_URL", "")
    assert config.resolve() == config.Connection(config.DEFAULT_URL, None)
    config.save_config("http://10.0.0.1:9000", "nc-saved")
    assert config.resolve() == config.Connection("http://10.0.0.1:9000", "nc-saved")
    assert config.resolve(token="") == config.Connection("http://10.0.0.1:9000", "nc-saved")
    monkeypatch.setenv("NEOCLOUD_TOKEN", "nc-env")
    assert config.resolve().token == "nc-env"
