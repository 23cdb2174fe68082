"""The SwiGLU feed-forward block (Shazeer, "GLU Variants Improve Transformer", 2020).

``down(silu(gate(x)) * up(x))``; the projection names follow Llama and DeepSeek-V3 checkpoints
(``gate_proj``, ``up_proj``, ``down_proj``) so that weights map one to one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SwiGLU", "swiglu_hidden_dim"]


def swiglu_hidden_dim(dim: int, *, multiple_of: int = 64, ratio: float = 8 / 3) -> int:
    """The hidden width of a SwiGLU block with about the parameters of a 4x GELU MLP.

    Args:
        dim: model width.
        multiple_of: round the width up to a multiple of this (hardware friendliness).
        ratio: hidden/model width before rounding; 8/3 keeps the parameter count of a 4x MLP.

    Returns:
        ``ratio * dim`` rounded up to a multiple of ``multiple_of``.
    """
    hidden = int(ratio * dim)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """Gated feed-forward block ``down(silu(gate(x)) * up(x))``.

    Args:
        dim: input and output width.
        hidden_dim: width of the gated hidden layer.
        bias: whether the three projections have biases (Llama and DeepSeek-V3: no).
        linear: builds each projection as ``linear(in_features, out_features, bias=bias)``, e.g. an
            ``nn.Linear`` subclass that simulates low-precision matrix products.
    """

    def __init__(
        self, dim: int, hidden_dim: int, *, bias: bool = False, linear: Callable[..., nn.Linear] = nn.Linear
    ) -> None:
        super().__init__()
        self.gate_proj = linear(dim, hidden_dim, bias=bias)
        self.up_proj = linear(dim, hidden_dim, bias=bias)
        self.down_proj = linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., dim) -> (..., dim)``."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
