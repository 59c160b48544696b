"""``python -m neocloud`` is the ``neocloud`` command."""

from __future__ import annotations

from neocloud.cli.main import main

if __name__ == "__main__":
    main()
