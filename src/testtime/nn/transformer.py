"""The Transformer++ block: pre-norm RoPE attention (optionally windowed, with a persistent prefix) and a
SwiGLU feed-forward sublayer, as in Llama.

"Transformer++" is the name the Titans paper (and Mamba before it) gives this recipe. It is the package's
one such block: the trainer's baseline (:mod:`testtime.train.transformer`) and Titans' sliding-window
baseline (``TitansConfig(variant="transformer")``) are both made of it.

Shape legend: ``b`` batch, ``t`` positions, ``D`` model width, ``d`` head dimension.
"""

from __future__ import annotations

import torch
from torch import nn

from testtime.nn.attention import CausalSelfAttention, KVCache
from testtime.nn.mlp import SwiGLU, swiglu_hidden_dim
from testtime.nn.norm import RMSNorm

__all__ = ["TransformerBlock"]


class TransformerBlock(nn.Module):
    """``x + attn(norm(x))``, then ``x + mlp(norm(x))``.

    Args:
        dim: model width ``D``.
        num_heads: query heads.
        num_kv_heads: key/value heads (None: as many as query heads).
        mlp_hidden_dim: SwiGLU width (None: 8/3 D rounded up to a multiple of 64).
        window: sliding-window size, or None for full causal attention.
        norm_eps: RMSNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        mlp_hidden_dim: int | None = None,
        window: int | None = None,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(dim, eps=norm_eps)
        self.attn = CausalSelfAttention(dim, num_heads, num_kv_heads=num_kv_heads, window=window)
        self.mlp_norm = RMSNorm(dim, eps=norm_eps)
        self.mlp = SwiGLU(dim, mlp_hidden_dim or swiglu_hidden_dim(dim))

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *,
        cache: KVCache | None = None,
        num_prefix: int = 0,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(b, t, D) -> (b, t, D)``; ``cos, sin (t, d/2)``; see :meth:`CausalSelfAttention.forward`."""
        x = x + self.attn(
            self.attn_norm(x), cos, sin, cache=cache, num_prefix=num_prefix, positions=positions
        )
        return x + self.mlp(self.mlp_norm(x))
