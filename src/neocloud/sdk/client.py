"""``neocloud.Client``: the typed Python client of the neocloud REST API."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from neocloud.config import resolve
from neocloud.errors import Unsupported
from neocloud.models import WhoAmI
from neocloud.sdk._http import HttpApi
from neocloud.sdk.admin import Admin
from neocloud.sdk.audit import Audit
from neocloud.sdk.budgets import Budgets
from neocloud.sdk.deployments import Deployments
from neocloud.sdk.events import Events
from neocloud.sdk.inventory import Fleet, Nodes, Shapes
from neocloud.sdk.invoices import Invoices
from neocloud.sdk.jobs import Jobs
from neocloud.sdk.metrics import Metrics
from neocloud.sdk.pods import Pods
from neocloud.sdk.prices import Prices
from neocloud.sdk.quotas import Queue, Quotas
from neocloud.sdk.secrets import Secrets
from neocloud.sdk.usage import Usage
from neocloud.sdk.volumes import Volumes
from neocloud.sdk.workspaces import Tokens, Workspaces

if TYPE_CHECKING:
    import openai


class Client:
    """A connection to one neocloud control plane, as one API token.

    Args:
        url: base URL of the control plane (``http://host:port``); else ``NEOCLOUD_URL``,
            else the config file, else
            :data:`neocloud.config.DEFAULT_URL`.
        token: API token; else ``NEOCLOUD_TOKEN``, else the config file (see
            :mod:`neocloud.config`). Without one every call fails with ``Unauthenticated``.
        timeout: seconds allowed for each HTTP request.
        transport: an ``httpx`` transport to send requests through instead of the network
            (for tests, e.g. ``httpx.MockTransport``).

    Every method raises the :mod:`neocloud.errors` class that the server raised
    (``NotFound``, ``ValidationFailed``, ...), ``Unavailable`` when the control plane cannot
    be reached, and ``Timeout`` when it does not answer in time.

    Example::

        with neocloud.Client() as client:
            client.deployments.create("minilm", "embeddings")
            client.deployments.wait_ready("minilm")
            vectors = client.openai().embeddings.create(model="minilm", input=["hi"])
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        resolved = resolve(url, token)
        self.url: str = resolved.url
        self.token: str | None = resolved.token
        self._api = HttpApi(self.url, self.token, timeout=timeout, transport=transport)
        self.deployments = Deployments(self._api)
        self.tokens = Tokens(self._api)
        self.workspaces = Workspaces(self._api)
        self.nodes = Nodes(self._api)
        self.shapes = Shapes(self._api)
        self.events = Events(self._api)
        self.usage = Usage(self._api)
        self.quotas = Quotas(self._api)
        self.queue = Queue(self._api)
        self.fleet = Fleet(self._api)
        self.jobs = Jobs(self._api)
        self.pods = Pods(self._api)
        self.secrets = Secrets(self._api)
        self.volumes = Volumes(self._api)
        self.audit = Audit(self._api)
        self.prices = Prices(self._api)
        self.invoices = Invoices(self._api)
        self.budgets = Budgets(self._api)
        self.metrics = Metrics(self._api)
        self.admin = Admin(self._api)

    def whoami(self) -> WhoAmI:
        """The caller's workspace and token."""
        return self._api.get_model(WhoAmI, "/whoami")

    def openai(self, **kwargs: Any) -> openai.OpenAI:
        """An official ``openai.OpenAI`` client for the gateway at ``<url>/v1``, with this
        client's token as its API key. ``kwargs`` go to ``openai.OpenAI`` (e.g.
        ``timeout``, ``max_retries``).

        Raises:
            Unsupported: the ``openai`` package is not installed.
        """
        try:
            import openai
        except ImportError as exc:
            raise Unsupported("the openai package is not installed: pip install openai") from exc
        kwargs.setdefault("base_url", f"{self.url}/v1")
        kwargs.setdefault("api_key", self.token or "")
        return openai.OpenAI(**kwargs)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._api.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(url={self.url!r})"
