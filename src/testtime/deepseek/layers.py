"""Small blocks of DeepSeek-V3: RMSNorm, the SwiGLU FFN, decoupled RoPE with DeepSeek's YaRN, linear layers.

They live here rather than in ``testtime.nn`` because the point is bit-for-bit parity with transformers'
``DeepseekV3ForCausalLM`` (the norm's cast order, YaRN's attention factor on cos/sin and mscale on the
softmax scale, the interleaved rotary layout of the release).

Shape legend: ``b`` batch, ``s`` positions, ``h`` heads, ``r`` rope dimension d_h^R (even), ``D`` model width.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from testtime.deepseek.config import yarn_mscale

__all__ = ["MLP", "RMSNorm", "RotaryEmbedding", "apply_rope", "make_linear", "yarn_inv_freq"]


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, normalised in at least float32 and cast back before the gain.

    Args:
        dim: the normalised (last) dimension.
        eps: added to the mean square.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., dim) -> (..., dim)`` in ``x.dtype``."""
        dtype = x.dtype
        h = x.to(torch.promote_types(dtype, torch.float32))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def make_linear(in_features: int, out_features: int, *, bias: bool = False, fp8: bool = False) -> nn.Linear:
    """An ``nn.Linear``, or its FP8-simulating subclass (same parameters, same state-dict keys).

    Args:
        in_features: input width.
        out_features: output width.
        bias: add a bias.
        fp8: simulate DeepSeek-V3's FP8 GEMM (see :mod:`testtime.deepseek.fp8`).

    Returns:
        The layer.
    """
    if fp8:
        from testtime.deepseek.fp8 import FP8Linear

        return FP8Linear(in_features, out_features, bias=bias)
    return nn.Linear(in_features, out_features, bias=bias)


class MLP(nn.Module):
    """SwiGLU FFN ``down(silu(gate(x)) * up(x))``: the dense layers and the shared experts.

    Args:
        hidden_size: model width D.
        intermediate_size: hidden width.
        fp8: simulate FP8 in the three projections.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, *, fp8: bool = False) -> None:
        super().__init__()
        self.gate_proj = make_linear(hidden_size, intermediate_size, fp8=fp8)
        self.up_proj = make_linear(hidden_size, intermediate_size, fp8=fp8)
        self.down_proj = make_linear(intermediate_size, hidden_size, fp8=fp8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., D)``."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def yarn_inv_freq(
    dim: int, *, theta: float, rope_scaling: dict[str, Any] | None
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies of the rotary pairs, YaRN-scaled as DeepSeek (and transformers) do.

    YaRN (arXiv 2309.00071) keeps the frequencies of pairs that rotate more than ``beta_fast`` times over the
    original context, divides by ``factor`` those rotating fewer than ``beta_slow`` times, and ramps linearly
    between (ramp ends rounded to whole pairs). The attention factor multiplies cos and sin; with DeepSeek's
    ``mscale == mscale_all_dim`` it is 1 and the temperature goes into the softmax scale instead
    (:attr:`DeepSeekV3Config.softmax_scale`).

    Args:
        dim: rope dimension d_h^R (even).
        theta: RoPE base.
        rope_scaling: the config's YaRN dictionary, or None for plain RoPE.

    Returns:
        ``inv_freq`` of shape ``(dim/2,)`` (float32 values, as transformers computes them) and the attention factor.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if rope_scaling is None:
        return inv_freq, 1.0
    factor = float(rope_scaling["factor"])
    original = int(rope_scaling["original_max_position_embeddings"])
    beta_fast = rope_scaling.get("beta_fast") or 32
    beta_slow = rope_scaling.get("beta_slow") or 1
    mscale = rope_scaling.get("mscale")
    mscale_all_dim = rope_scaling.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    else:
        attention_factor = yarn_mscale(factor)

    def pair_index(
        rotations: float,
    ) -> float:  # the pair whose wavelength fits `rotations` times into `original`
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(pair_index(beta_fast)), 0)
    high = min(math.ceil(pair_index(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (keep the frequency), 0: interpolate (divide by factor)
    inv_freq = (inv_freq / factor) * (1 - keep) + inv_freq * keep
    return inv_freq, float(attention_factor)


class RotaryEmbedding(nn.Module):
    """Cosines and sines of the decoupled RoPE for given positions.

    Args:
        dim: rope dimension d_h^R.
        theta: RoPE base.
        rope_scaling: YaRN parameters or None.
    """

    def __init__(self, dim: int, *, theta: float, rope_scaling: dict[str, Any] | None) -> None:
        super().__init__()
        inv_freq, self.attention_factor = yarn_inv_freq(dim, theta=theta, rope_scaling=rope_scaling)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Angles ``positions * inv_freq``.

        Args:
            positions: ``(s,)`` or ``(b, s)`` integer positions.
            dtype: the dtype to return.

        Returns:
            ``cos, sin`` of shape ``(*positions.shape, r/2)``, scaled by the YaRN attention factor.
        """
        compute = torch.promote_types(dtype, torch.float32)
        angles = positions.to(compute)[..., None] * self.inv_freq.to(compute)
        f = self.attention_factor
        return (angles.cos() * f).to(dtype), (angles.sin() * f).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleave: bool) -> torch.Tensor:
    """Rotate the rope dimensions of ``x``.

    With ``interleave`` (the release's layout) pair i is dimensions (2i, 2i+1); otherwise (i, i + r/2).
    The output is always in half-split layout (rotated first members, then second members): a fixed
    permutation applied to queries and keys alike, so every dot product equals the interleaved one.

    Args:
        x: ``(b, s, [h,] r)``.
        cos: ``(b, s, r/2)`` or ``(s, r/2)``, broadcast over heads.
        sin: same as ``cos``.
        interleave: the input pairs are adjacent.

    Returns:
        ``x`` rotated, same shape and dtype.
    """
    if x.dim() == 4:  # heads axis
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
