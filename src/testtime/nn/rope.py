"""Rotary position embeddings (Su et al., RoFormer, 2021) with optional YaRN scaling (Peng et al., 2023).

Two layouts of the rotated pairs are in use and both are supported:

* half-split (``interleaved=False``; Llama, GPT-NeoX, Hugging Face): dimension ``i`` pairs with ``i + d/2``;
* interleaved (``interleaved=True``; RoFormer, GPT-J, DeepSeek-V3's reference inference code): dimension
  ``2i`` pairs with ``2i + 1``.

Pair ``i`` rotates by angle ``position * inv_freq[i]`` in both layouts, so the two differ only by a fixed
permutation of the head dimension.

YaRN ("YaRN: Efficient Context Window Extension of Large Language Models", arXiv 2309.00071) blends, per
frequency, the original inverse frequency (high frequencies, which rotate many times within the original
context: kept) with the frequency divided by ``factor`` (low frequencies: interpolated), using a linear ramp
between the dimensions that complete ``beta_fast`` and ``beta_slow`` rotations over the original context;
it also scales cos and sin by an attention factor ``0.1 * ln(factor) + 1`` (YaRN eq. 22's sqrt(1/t)).
The parameters and their defaults are those of the Hugging Face ``rope_scaling`` / ``rope_parameters``
dictionary (``type: yarn``) that DeepSeek-V3 checkpoints carry, and the computation matches
``transformers``' YaRN initialisation (tested).

Shape legend: ``b`` batch, ``h`` heads, ``t`` positions, ``d`` rotated head dimension (even).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "RotaryEmbedding",
    "YarnConfig",
    "apply_rope",
    "rope_cos_sin",
    "rope_inv_freq",
    "yarn_from_rope_scaling",
    "yarn_mscale",
]


@dataclass(kw_only=True)
class YarnConfig:
    """YaRN context extension, with the fields and defaults of Hugging Face's ``rope_scaling`` (type yarn).

    Attributes:
        factor: context extension ratio (new length / original length); DeepSeek-V3 uses 40.
        original_max_position_embeddings: the context length the model was pretrained with (DeepSeek-V3: 4096).
        beta_fast: pairs completing more than this many rotations over the original context keep their
            frequency (the paper's beta; default 32).
        beta_slow: pairs completing fewer than this many rotations are fully interpolated (the paper's
            alpha; default 1).
        mscale: numerator coefficient of the attention factor ``0.1 * mscale * ln(factor) + 1``.
        mscale_all_dim: denominator coefficient; when both ``mscale`` and ``mscale_all_dim`` are non-zero the
            attention factor is ``yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)``
            (DeepSeek-V3: both 1, so cos/sin are unscaled and the softmax scale carries
            ``yarn_mscale(factor, mscale_all_dim) ** 2`` instead); otherwise it is ``yarn_mscale(factor)``.
        attention_factor: an explicit attention factor that overrides the two above.
        truncate: round the ramp's ends to whole dimensions (Hugging Face's default True).
    """

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True

    def __post_init__(self) -> None:
        if self.factor < 1.0:
            raise ValueError(f"YaRN factor must be >= 1, got {self.factor}")
        if self.original_max_position_embeddings <= 0:
            raise ValueError("YaRN original_max_position_embeddings must be positive")
        if self.beta_fast <= self.beta_slow:
            raise ValueError(f"YaRN needs beta_fast > beta_slow, got {self.beta_fast} <= {self.beta_slow}")


def yarn_from_rope_scaling(rope_scaling: dict[str, Any] | None) -> YarnConfig | None:
    """A :class:`YarnConfig` from a Hugging Face / DeepSeek ``rope_scaling`` dictionary (None: plain RoPE).

    Missing or null ``beta_fast`` / ``beta_slow`` take YaRN's defaults (32, 1).
    """
    if rope_scaling is None:
        return None
    return YarnConfig(
        factor=float(rope_scaling["factor"]),
        original_max_position_embeddings=int(rope_scaling["original_max_position_embeddings"]),
        beta_fast=float(rope_scaling.get("beta_fast") or 32.0),
        beta_slow=float(rope_scaling.get("beta_slow") or 1.0),
        mscale=rope_scaling.get("mscale"),
        mscale_all_dim=rope_scaling.get("mscale_all_dim"),
        attention_factor=rope_scaling.get("attention_factor"),
    )


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature correction ``0.1 * mscale * ln(factor) + 1`` (1 when ``factor <= 1``)."""
    if factor <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def _correction_dim(num_rotations: float, dim: int, theta: float, max_len: int) -> float:
    """The (fractional) pair index whose wavelength fits ``num_rotations`` times into ``max_len`` positions."""
    return dim * math.log(max_len / (num_rotations * 2 * math.pi)) / (2 * math.log(theta))


def rope_inv_freq(
    dim: int, *, theta: float = 10000.0, yarn: YarnConfig | None = None
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies of the rotated pairs, optionally YaRN-scaled.

    Args:
        dim: rotated head dimension ``d`` (even).
        theta: the RoPE base.
        yarn: YaRN scaling, or None for plain RoPE.

    Returns:
        ``inv_freq`` of shape ``(d/2,)`` in float32 (computed in float64), and the attention factor that
        multiplies cos and sin (1.0 without YaRN).
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"rotary dimension must be positive and even, got {dim}")
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    inv_freq = 1.0 / theta**exponents
    if yarn is None:
        return inv_freq.float(), 1.0
    low = _correction_dim(yarn.beta_fast, dim, theta, yarn.original_max_position_embeddings)
    high = _correction_dim(yarn.beta_slow, dim, theta, yarn.original_max_position_embeddings)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0.0, 1.0)
    # ramp = 0: fast-rotating pairs keep their frequency; ramp = 1: slow pairs are interpolated by `factor`.
    inv_freq = inv_freq * (1.0 - ramp) + (inv_freq / yarn.factor) * ramp
    if yarn.attention_factor is not None:
        attention_factor = yarn.attention_factor
    elif yarn.mscale and yarn.mscale_all_dim:
        attention_factor = yarn_mscale(yarn.factor, yarn.mscale) / yarn_mscale(
            yarn.factor, yarn.mscale_all_dim
        )
    else:
        attention_factor = yarn_mscale(yarn.factor)
    return inv_freq.float(), float(attention_factor)


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, *, attention_factor: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines of the rotation angles ``positions * inv_freq``.

    Args:
        positions: ``(t,)`` or ``(b, t)`` integer or float positions.
        inv_freq: ``(d/2,)``.
        attention_factor: multiplies both (YaRN).

    Returns:
        ``cos, sin`` of shape ``(*positions.shape, d/2)`` in ``inv_freq``'s dtype promoted to at least float32.
    """
    dtype = torch.promote_types(inv_freq.dtype, torch.float32)
    angles = positions.to(dtype)[..., None] * inv_freq.to(dtype)
    return angles.cos() * attention_factor, angles.sin() * attention_factor


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False
) -> torch.Tensor:
    """Rotate the pairs of ``x`` by the angles whose cosines and sines are given.

    Args:
        x: ``(..., t, d)``, e.g. ``(b, h, t, d)``.
        cos: broadcastable to ``(..., t, d/2)``: ``(t, d/2)``, or ``(b, 1, t, d/2)`` for per-sequence positions.
        sin: same shape as ``cos``.
        interleaved: pair ``(2i, 2i+1)`` instead of ``(i, i + d/2)``.

    Returns:
        ``(..., t, d)`` in ``x.dtype`` (computed in at least float32).
    """
    dtype = x.dtype
    compute = torch.promote_types(torch.promote_types(dtype, cos.dtype), torch.float32)
    h, cos, sin = x.to(compute), cos.to(compute), sin.to(compute)
    if interleaved:
        x1, x2 = h[..., 0::2], h[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        x1, x2 = h.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(dtype)


class RotaryEmbedding(nn.Module):
    """Holds the inverse frequencies and produces cos/sin for given positions.

    Args:
        dim: rotated head dimension ``d`` (even).
        theta: the RoPE base (Llama 2: 10000, Llama 3: 500000).
        yarn: optional YaRN scaling.
        interleaved: the pair layout used by :meth:`rotate`.
    """

    inv_freq: torch.Tensor

    def __init__(
        self, dim: int, *, theta: float = 10000.0, yarn: YarnConfig | None = None, interleaved: bool = False
    ) -> None:
        super().__init__()
        inv_freq, self.attention_factor = rope_inv_freq(dim, theta=theta, yarn=yarn)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.dim, self.theta, self.yarn, self.interleaved = dim, theta, yarn, interleaved

    def forward(
        self, positions: torch.Tensor, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``positions (t,) or (b, t) -> cos, sin (*positions.shape, d/2)``, cast to ``dtype`` if given."""
        cos, sin = rope_cos_sin(positions, self.inv_freq, attention_factor=self.attention_factor)
        if dtype is not None:
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos, sin

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """:func:`apply_rope` with this module's layout; ``x (..., t, d)``."""
        return apply_rope(x, cos, sin, interleaved=self.interleaved)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, theta={self.theta}, interleaved={self.interleaved}, yarn={self.yarn}"
