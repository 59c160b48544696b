"""``python -m neocloud.gateway``: see :mod:`neocloud.gateway.runner`."""

from __future__ import annotations

import sys

from neocloud.gateway.runner import main

sys.exit(main())
