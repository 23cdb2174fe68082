"""Root-mean-square layer normalisation (Zhang and Sennrich, 2019), computed in float32.

Shape legend: ``...`` any leading dimensions, ``d`` the normalised (last) dimension.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RMSNorm", "rms_norm"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, *, eps: float = 1e-6) -> torch.Tensor:
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last dimension.

    Low-precision inputs (float16, bfloat16) are normalised in float32 and cast back; float64 stays
    float64. The gain is applied in the compute dtype before the cast (Hugging Face's Llama casts first,
    then multiplies; the two agree exactly in float32 and differ by one rounding in bfloat16).

    Args:
        x: ``(..., d)``.
        weight: ``(d,)`` gain, or None for no gain.
        eps: added to the mean square before the square root.

    Returns:
        ``(..., d)`` in ``x.dtype``.
    """
    dtype = x.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    h = x.to(compute)
    h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        h = h * weight.to(compute)
    return h.to(dtype)


class RMSNorm(nn.Module):
    """RMS normalisation over the last dimension with a learned gain initialised to one.

    Args:
        dim: size of the normalised dimension ``d``.
        eps: added to the mean square for stability (Llama uses 1e-5 or 1e-6, DeepSeek-V3 1e-6).
    """

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d) -> (..., d)``, same dtype as ``x``."""
        return rms_norm(x, self.weight, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
