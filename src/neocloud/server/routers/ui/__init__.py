"""The web console at ``/ui``: server-rendered pages over the same services as the REST API.

Login takes an API token and keeps it in a cookie marked ``HttpOnly`` (page scripts never
see it) and ``SameSite=Strict`` (no other site can make the browser send it); each request
authenticates it exactly like a bearer token. Who sees what follows the API: an operator
(admin of an operator workspace) sees every workspace and may narrow the pages to one with
``?ws=NAME``; anyone else sees their own workspace only, and a viewer gets no control that
changes anything (the actions check the role again). Actions are ``POST`` requests that
must carry the ``X-Neocloud-Console`` header, which a cross-site form cannot send.

Live data: pages poll small JSON (``/ui/data/...``) and HTML fragments (``?fragment=1``)
with ``web/static/console.js``; charts are drawn by the vendored uPlot.
"""

from __future__ import annotations

# The modules below add their routes to ``router`` when imported.
from neocloud.server.routers.ui import actions, data, pages  # noqa: F401
from neocloud.server.routers.ui.common import COOKIE, install, router

__all__ = ["COOKIE", "install", "router"]
