"""Linear layers with their weights prepacked for oneDNN (bfloat16 on CPU).

A bfloat16 ``torch.nn.functional.linear`` on CPU hands the weight to oneDNN at every call,
which reorders it into its blocked layout first; for the small row counts of a decode step
that per-call work is a large part of the product. :func:`pack_linears` reorders once, at
start: every ``torch.nn.Linear`` of a bfloat16 model on CPU is replaced by a
:class:`PackedLinear` holding the reordered weight, called through oneDNN's linear
operator. Measured on a 2-core AVX512-BF16 CPU, one product of the decode step took
(microseconds, plain → packed): 576→1536 at 32 rows 228 → 150, the LM head (576→49,152) at
1 row 9,199 → 2,856 and at 32 rows 9,978 → 5,685.

Numerics: the packed product is bit-identical to ``F.linear`` in bfloat16, for the same rows.
On an AVX512-BF16 CPU without AMX it is also row-invariant (a row gives the same output
whatever rows are beside it; checked for 1-512 rows); on a CPU with AMX neither product is
(a row of a 33-row product differed from the row alone by one rounding step, plain and
packed alike). float32 models are left alone: oneDNN's packed float32 product is
faster too but not row-invariant (a row of a 2-row product differs from the row alone by
about 1e-4), and float32 is the configuration whose batched text equals its text alone.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("neocloud.serving")

__all__ = ["PackedLinear", "can_pack", "pack_linears"]


def can_pack(dtype: Any, device: str) -> bool:
    """Whether :func:`pack_linears` applies: bfloat16 on CPU with oneDNN available."""
    return (dtype is torch.bfloat16 and torch.device(device).type == "cpu"
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear(torch.nn.Module):
    """``y = x W^T + b`` with ``W`` reordered once for oneDNN (see the module docstring).

    Args:
        linear: the bfloat16 CPU layer to replace; its weight is not kept (a tied LM
            head's weight stays alive through the embedding that shares it).

    Raises:
        RuntimeError: oneDNN cannot reorder this weight.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None
                    ) -> PackedLinear:
        """A packed layer of a bfloat16 CPU ``weight`` ``(out_features, in_features)``
        (e.g. the rows of several layers concatenated) and optional ``bias``."""
        layer = torch.nn.Linear(1, 1, bias=False)
        layer.in_features, layer.out_features = weight.shape[1], weight.shape[0]
        layer.weight = torch.nn.Parameter(weight.detach(), requires_grad=False)
        layer.bias = None if bias is None else torch.nn.Parameter(bias.detach(),
                                                                   requires_grad=False)
        return cls(layer)

    def weight_matrix(self) -> torch.Tensor:
        """The plain weight ``(out_features, in_features)``, read back from the packed one
        as the product of the identity: each output is one weight times 1.0 plus zeros,
        accumulated in float32, so the bfloat16 values come back exactly."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        with torch.inference_mode():
            out = torch.ops.mkldnn._linear_pointwise(eye, self.packed, None, "none", [], "")
        return out.t().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def add_forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``x W^T + b + other`` in one oneDNN call (the sum is a post-op of the product;
        ``other`` has the output's shape)."""
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, self.bias,
                                                         "add")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def pack_linears(model: Any, device: str) -> int:
    """Replace every bfloat16 ``torch.nn.Linear`` of ``model`` by a packed layer, in
    place, when :func:`can_pack` holds for the model's dtype and ``device``; returns how
    many were replaced (0 when not applicable or already packed). A layer whose packed
    product does not reproduce ``F.linear`` exactly on a probe input is left as it is
    (logged), so a oneDNN build that disagrees never changes what the model computes."""
    try:
        dtype = next(model.parameters()).dtype
    except StopIteration:
        return 0
    if not can_pack(dtype, device):
        return 0
    targets = [(name, mod) for name, mod in model.named_modules()
               if type(mod) is torch.nn.Linear and mod.weight.dtype is torch.bfloat16
               and mod.weight.device.type == "cpu"]
    replaced = 0
    with torch.no_grad():
        for name, mod in targets:
            try:
                packed = PackedLinear(mod)
                probe = torch.linspace(-1, 1, 3 * mod.in_features, dtype=torch.bfloat16
                                       ).reshape(3, mod.in_features)
                if not torch.equal(packed(probe), torch.nn.functional.linear(
                        probe, mod.weight, mod.bias)):
                    log.warning("packed linear %s differs from F.linear; left unpacked", name)
                    continue
            except RuntimeError as exc:
                log.warning("cannot pack linear %s: %s", name, exc)
                continue
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, packed)
            replaced += 1
    return replaced
