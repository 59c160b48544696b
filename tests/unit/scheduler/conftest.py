from __future__ import annotations

import sys
from pathlib import Path

# Tests here import the hand-made inventory helpers from sched_helpers.py.
sys.path.insert(0, str(Path(__file__).parent))
