"""Replica processes run without Hugging Face progress bars.

Found: ``neocloud logs`` and the console showed ``Loading weights: 0%|...`` lines full of
carriage returns from transformers while a replica loaded its model. :func:`run` now turns
the bars off (for libraries already imported and, through ``HF_HUB_DISABLE_PROGRESS_BARS``,
for those imported later and for pool workers).
"""

from __future__ import annotations

import os
import subprocess
import sys

PRELUDE = """
import os
os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
{before}
from neocloud.serving import runner
runner.build_app = lambda *a, **k: object()
runner.ReplicaServer.run = lambda self, sockets=None: None
runner.run("embeddings", port=1)
import transformers.utils.logging as tl
from huggingface_hub.utils import are_progress_bars_disabled
print(os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"), tl.is_progress_bar_enabled(),
      are_progress_bars_disabled())
"""


def _run(before: str, env: dict[str, str] | None = None) -> list[str]:
    full = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    full.update(env or {})
    code = PRELUDE.format(before=before)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=full, timeout=120, check=True)
    return out.stdout.split()


def test_run_turns_bars_off_for_libraries_imported_before() -> None:
    before = ("import transformers.utils.logging as tl0\n"
              "from huggingface_hub.utils import are_progress_bars_disabled as d0\n"
              "assert tl0.is_progress_bar_enabled() and not d0()")
    assert _run(before) == ["1", "False", "True"]


def test_run_turns_bars_off_for_libraries_imported_after() -> None:
    before = "import sys\nassert 'transformers' not in sys.modules"
    assert _run(before) == ["1", "False", "True"]
