"""Root-mean-square layer normalisation (Zhang and Sennrich, 2019), computed in float32.

Shape legend: ``...`` any leading dimensions, ``d`` the normalised (last) dimension.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RMSNorm", "rms", "rms_norm"]


def rms(x: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """``sqrt(mean(x**2) + eps)`` over the last dimension, kept: ``(..., d) -> (..., 1)`` (same dtype).

    For code that needs the scale itself, e.g. the analytic gradient of a normalisation.
    """
    return torch.sqrt(x.square().mean(dim=-1, keepdim=True) + eps)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None, *, eps: float = 1e-6, cast_before_gain: bool = False
) -> torch.Tensor:
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last dimension.

    Low-precision inputs (float16, bfloat16) are normalised in float32 and cast back; float64 stays
    float64. By default the gain is applied in the compute dtype before the cast; ``cast_before_gain``
    casts first and multiplies in ``x.dtype`` (Hugging Face's Llama and DeepSeek-V3 order). The two agree
    exactly in float32 and float64 and differ by one rounding in bfloat16.

    Args:
        x: ``(..., d)``.
        weight: gain broadcastable to ``(..., d)`` (usually ``(d,)``), or None for no gain.
        eps: added to the mean square before the square root.
        cast_before_gain: cast the normalised values to ``x.dtype`` before multiplying by the gain.

    Returns:
        ``(..., d)`` in ``x.dtype``.
    """
    dtype = x.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    h = x.to(compute)
    h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is None:
        return h.to(dtype)
    if cast_before_gain:
        return weight.to(dtype) * h.to(dtype)
    return (h * weight.to(compute)).to(dtype)


class RMSNorm(nn.Module):
    """RMS normalisation over the last dimension with a learned gain initialised to one.

    Args:
        dim: size of the normalised dimension ``d``.
        eps: added to the mean square for stability (Llama uses 1e-5 or 1e-6, DeepSeek-V3 1e-6).
        cast_before_gain: see :func:`rms_norm` (DeepSeek-V3 uses True for parity with transformers).
    """

    def __init__(self, dim: int, *, eps: float = 1e-6, cast_before_gain: bool = False) -> None:
        super().__init__()
        self.eps, self.cast_before_gain = eps, cast_before_gain
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d) -> (..., d)``, same dtype as ``x``."""
        return rms_norm(x, self.weight, eps=self.eps, cast_before_gain=self.cast_before_gain)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
