"""Fast forms of the shared blocks for decoding, each tested against its plain form in :mod:`testtime.nn`.

:func:`apply_rope_native` rotates in the input's own dtype (no float32 round trip), with tables that
repeat the ``d/2`` angles over both halves, as transformers' Llama family computes RoPE. In float32 and
float64 it equals :func:`testtime.nn.rope.apply_rope` exactly; in bfloat16 it rounds after each product
(as transformers does), so a bfloat16 decoder built on it makes the same greedy choices as transformers'
own bfloat16 forward, where the float32 round trip of the plain form drifts by one bfloat16 rounding.


:func:`apply_rope_swapped` is the same rotation in four operations instead of seven (``rotate_half`` as a
swap of the halves times a sign-folded sine table), bit for bit equal to :func:`apply_rope_native`: the
sign flip is exact, so ``(-x2) * s == x2 * (-s)``. :func:`rms_norm_fused` is :func:`testtime.nn.norm.rms_norm`
as one call to torch's ``rms_norm`` on a gain kept in the compute dtype, bit for bit equal to it on the CPU
(torch composes the same operations in the same order, with fewer dispatches).
:func:`rms_norm_by_layer_norm` computes the same normalisation with torch's fused LayerNorm kernel on
``[x, -x]`` (a vector whose mean is zero and whose variance is ``x``'s mean square): about half the time of
:func:`rms_norm_fused` for a few rows, equal to it up to the rounding of the variance (one unit in the last
place of a bfloat16 output, rarely); the engine uses it where it multiplies by quantized weights anyway.

Shape legend: ``d`` the rotated head dimension (even), ``...`` any leading dimensions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "apply_rope_native",
    "apply_rope_swapped",
    "full_rope_tables",
    "layer_norm_gain",
    "rms_norm_by_layer_norm",
    "rms_norm_fused",
    "signed_sin_table",
]


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


def signed_sin_table(sin: torch.Tensor) -> torch.Tensor:
    """A full ``(..., d)`` sine table (see :func:`full_rope_tables`) with its first half negated."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def apply_rope_swapped(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rope_native` as ``x * cos + swap_halves(x) * signed_sin`` (bit for bit equal).

    Args:
        x: ``(..., t, d)``.
        cos: broadcastable to ``(..., t, d)``, in ``x.dtype`` (see :func:`full_rope_tables`).
        signed_sin: the matching sine table through :func:`signed_sin_table`.

    Returns:
        ``(..., t, d)`` in ``x.dtype``.
    """
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin


def rms_norm_fused(x: torch.Tensor, weight: torch.Tensor, *, eps: float) -> torch.Tensor:
    """:func:`testtime.nn.norm.rms_norm` (gain applied before the cast) with the gain in the compute dtype.

    Args:
        x: ``(..., d)``.
        weight: ``(d,)`` in the compute dtype: float32 for float32 / bfloat16 / float16 inputs, float64 for
            float64 (``rms_norm``'s rule).
        eps: added to the mean square.

    Returns:
        ``(..., d)`` in ``x.dtype``.
    """
    return F.rms_norm(x.to(weight.dtype), (x.shape[-1],), weight, eps).to(x.dtype)


def layer_norm_gain(weight: torch.Tensor) -> torch.Tensor:
    """The ``(2 d,)`` gain of :func:`rms_norm_by_layer_norm` for an RMSNorm gain ``(d,)``: ``[weight, 0]``.

    In float32 (float64 for a float64 gain), the dtype the normalisation is computed in.
    """
    compute = torch.float64 if weight.dtype == torch.float64 else torch.float32
    weight = weight.detach().to(compute)
    return torch.cat([weight, torch.zeros_like(weight)])


def rms_norm_by_layer_norm(x: torch.Tensor, gain: torch.Tensor, *, eps: float) -> torch.Tensor:
    """RMSNorm ``x / sqrt(mean(x**2) + eps) * weight`` as LayerNorm of ``[x, -x]``, first half.

    ``[x, -x]`` has mean 0 and variance ``mean(x**2)``, so LayerNorm's ``(v - mean) / sqrt(var + eps)``
    is RMSNorm's; torch runs LayerNorm as one fused kernel (float32 inside for low-precision inputs, the
    gain applied before the cast back), RMSNorm as a chain of small ones.

    Args:
        x: ``(..., d)``.
        gain: ``(2 d,)`` from :func:`layer_norm_gain`.
        eps: added to the mean square.

    Returns:
        ``(..., d)`` in ``x.dtype`` (a view of a ``(..., 2 d)`` tensor).
    """
    d = x.shape[-1]
    return F.layer_norm(torch.cat([x, -x], dim=-1), (2 * d,), gain, None, eps)[..., :d]
