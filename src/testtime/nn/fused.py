"""Fast forms of the shared blocks for decoding, each tested against its plain form in :mod:`testtime.nn`.

:func:`apply_rope_native` rotates in the input's own dtype (no float32 round trip), with tables that
repeat the ``d/2`` angles over both halves, as transformers' Llama family computes RoPE. In float32 and
float64 it equals :func:`testtime.nn.rope.apply_rope` exactly; in bfloat16 it rounds after each product
(as transformers does), so a bfloat16 decoder built on it makes the same greedy choices as transformers'
own bfloat16 forward, where the float32 round trip of the plain form drifts by one bfloat16 rounding.

Shape legend: ``d`` the rotated head dimension (even), ``...`` any leading dimensions.
"""

from __future__ import annotations

import torch

__all__ = ["apply_rope_native", "full_rope_tables"]


def full_rope_tables(
    cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(..., d/2)`` cos/sin tables as ``(..., d)`` (both halves), in ``dtype``, for :func:`apply_rope_native`."""
    return torch.cat((cos, cos), dim=-1).to(dtype), torch.cat((sin, sin), dim=-1).to(dtype)


def apply_rope_native(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split RoPE computed in ``x.dtype``: ``x * cos + rotate_half(x) * sin``.

    Args:
        x: ``(..., t, d)``.
        cos: broadcastable to ``(..., t, d)``, in ``x.dtype`` (see :func:`full_rope_tables`).
        sin: same shape as ``cos``.

    Returns:
        ``(..., t, d)`` in ``x.dtype``.
    """
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
