"""Small blocks of DeepSeek-V3 on top of :mod:`testtime.nn`: the norm in transformers' cast order, the SwiGLU
FFN with optional FP8 projections, and linear layers.

RMSNorm, RoPE and YaRN are :mod:`testtime.nn`'s (one implementation in the package). What DeepSeek-V3 needs
for bit-for-bit parity with transformers' ``DeepseekV3ForCausalLM`` is chosen here: the norm casts back to
the input dtype before the gain (:func:`norm`), YaRN's attention factor multiplies cos/sin and its mscale the
softmax scale (:attr:`DeepSeekV3Config.softmax_scale`), and the release's interleaved rotary layout.

Shape legend: ``D`` model width, ``I`` hidden width of an FFN.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from testtime.nn import RMSNorm, RotaryEmbedding, SwiGLU, yarn_from_rope_scaling

__all__ = ["MLP", "RMSNorm", "make_linear", "norm", "rotary_embedding"]


def norm(dim: int, *, eps: float = 1e-6) -> RMSNorm:
    """DeepSeek-V3's RMSNorm: :class:`testtime.nn.RMSNorm` cast back to the input dtype before the gain."""
    return RMSNorm(dim, eps=eps, cast_before_gain=True)


def rotary_embedding(dim: int, *, theta: float, rope_scaling: dict | None) -> RotaryEmbedding:
    """The decoupled RoPE's cos/sin (d_h^R = ``dim``), YaRN-scaled by the config's ``rope_scaling`` dict."""
    return RotaryEmbedding(dim, theta=theta, yarn=yarn_from_rope_scaling(rope_scaling))


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


class MLP(SwiGLU):
    """SwiGLU FFN ``down(silu(gate(x)) * up(x))``: the dense layers and the shared experts.

    :class:`testtime.nn.SwiGLU` whose projections simulate FP8 when ``fp8`` is set.

    Args:
        hidden_size: model width D.
        intermediate_size: hidden width I.
        fp8: simulate FP8 in the three projections.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, *, fp8: bool = False) -> None:
        super().__init__(hidden_size, intermediate_size, linear=partial(make_linear, fp8=fp8))
