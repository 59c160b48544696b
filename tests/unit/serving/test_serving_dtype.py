"""The chat model's dtype: float32 on CPU (batch-invariant numerics), bfloat16 on CUDA,
``NEOCLOUD_DTYPE`` overriding either; an unknown name is refused naming the variable."""

from __future__ import annotations

import pytest
import torch

from neocloud.serving.settings import ServingSettings
from neocloud.serving.textgen.loading import pick_dtype


def test_default_and_named_dtypes() -> None:
    assert pick_dtype("cpu") is torch.float32
    assert pick_dtype("cuda:1") is torch.bfloat16
    assert pick_dtype("cpu", "bfloat16") is torch.bfloat16
    assert pick_dtype("cuda", "float32") is torch.float32
    with pytest.raises(ValueError, match="NEOCLOUD_DTYPE"):
        pick_dtype("cpu", "float16")


def test_settings_read_the_dtype() -> None:
    assert ServingSettings.from_env({"NEOCLOUD_DTYPE": "bfloat16"}).dtype == "bfloat16"
    assert ServingSettings.from_env({}).dtype is None
