"""The Transformer++ baseline: a Llama-style decoder (RoPE, SwiGLU, RMSNorm, pre-norm), optionally windowed.

"Transformer++" is the name the Titans paper (and Mamba before it) gives this recipe; it is the comparison
point for the Titans and DeepSeek-V3 experiments. Blocks are :class:`testtime.nn.TransformerBlock`
(``x + attn(norm(x))`` then ``x + mlp(norm(x))``, the same block as Titans' sliding-window baseline); the
input embedding and the output head are tied by default, as in GPT-2 and nanoGPT.
Weights start from N(0, 0.02), with the two residual output projections per block scaled down by
``1/sqrt(2 * num_layers)`` (GPT-2's initialisation).

Shape legend: ``b`` batch, ``t`` positions, ``D`` model width, ``V`` vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from testtime.nn import KVCache, LMOutput, RMSNorm, RotaryEmbedding, TransformerBlock
from testtime.train.registry import register_model

__all__ = ["Transformer", "TransformerBlock", "TransformerConfig"]


@dataclass(kw_only=True)
class TransformerConfig:
    """Hyperparameters of the baseline (defaults: the ``shakespeare`` preset, 0.8M parameters with bytes)."""

    dim: int = 128  # model width D
    num_layers: int = 4  # decoder blocks
    num_heads: int = 4  # query heads
    num_kv_heads: int | None = None  # key/value heads (None: = num_heads; fewer: grouped-query attention)
    mlp_hidden_dim: int | None = None  # SwiGLU width (None: 8/3 * dim rounded up to a multiple of 64)
    window: int | None = None  # sliding-window attention size (None: full causal attention)
    rope_theta: float = 10000.0  # RoPE base
    norm_eps: float = 1e-6  # RMSNorm epsilon
    tie_embeddings: bool = True  # share the input embedding and the output head
    max_seq_len: int = 1024  # longest context used when sampling (RoPE itself has no limit)
    init_std: float = 0.02  # standard deviation of the initial weights

    def __post_init__(self) -> None:
        for name in ("dim", "num_layers", "num_heads", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if (self.dim // self.num_heads) % 2:
            raise ValueError(f"head dimension {self.dim // self.num_heads} must be even for RoPE")
        if self.num_kv_heads is not None and (self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads):
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")

    @classmethod
    def tiny(cls) -> TransformerConfig:
        """For tests: 2 layers of width 32."""
        return cls(dim=32, num_layers=2, num_heads=2, max_seq_len=128)

    @classmethod
    def shakespeare(cls) -> TransformerConfig:
        """A few minutes on a laptop CPU with bytes: 4 layers of width 128, 4 heads (0.8M parameters)."""
        return cls()

    @classmethod
    def small(cls) -> TransformerConfig:
        """GPT-2-small shape: 12 layers of width 768, 12 heads (~85M parameters without embeddings)."""
        return cls(dim=768, num_layers=12, num_heads=12, max_seq_len=2048)


class Transformer(nn.Module):
    """The Transformer++ language model.

    Args:
        config: hyperparameters.
        vocab_size: ``V``.
    """

    def __init__(self, config: TransformerConfig, *, vocab_size: int) -> None:
        super().__init__()
        self.config, self.vocab_size = config, vocab_size
        self.max_seq_len = config.max_seq_len
        self.embed = nn.Embedding(vocab_size, config.dim)
        self.rope = RotaryEmbedding(config.dim // config.num_heads, theta=config.rope_theta)
        self.layers = nn.ModuleList(
            TransformerBlock(
                config.dim,
                config.num_heads,
                num_kv_heads=config.num_kv_heads,
                mlp_hidden_dim=config.mlp_hidden_dim,
                window=config.window,
                norm_eps=config.norm_eps,
            )
            for _ in range(config.num_layers)
        )
        self.norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.dim, vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, init_std), residual output projections scaled by 1/sqrt(2 * layers)."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        for layer in self.layers:
            for proj in (layer.attn.o_proj, layer.mlp.down_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.num_layers))

    def new_caches(self) -> list[KVCache]:
        """Empty key/value caches, one per layer, for :meth:`forward` with ``caches``."""
        return [KVCache() for _ in self.layers]

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        caches: list[KVCache] | None = None,
    ) -> LMOutput:
        """Logits for every position and, with labels, the mean next-token cross-entropy.

        Args:
            input_ids: ``(b, t)`` token ids.
            labels: ``(b, t)`` next-token ids (``-100`` ignored), or None.
            caches: per-layer caches for incremental decoding; positions continue after the cached ones.

        Returns:
            ``LMOutput(logits (b, t, V), loss)``.
        """
        start = caches[0].length if caches else 0
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        cos, sin = self.rope(positions)
        x = self.embed(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache=caches[i] if caches else None)
        logits = self.lm_head(self.norm(x))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return LMOutput(logits=logits, loss=loss)


def _build(config: TransformerConfig, vocab_size: int) -> Transformer:
    return Transformer(config, vocab_size=vocab_size)


register_model(
    "transformer",
    config_cls=TransformerConfig,
    build=_build,
    presets={
        "tiny": TransformerConfig.tiny,
        "shakespeare": TransformerConfig.shakespeare,
        "small": TransformerConfig.small,
    },
    default_preset="shakespeare",
    description="Transformer++ baseline: RoPE, SwiGLU, RMSNorm, optional sliding window",
)
