"""One DeepSeek-V3 decoder layer (MLA, then a dense or MoE FFN; pre-norm residual) and the loss it is
trained with. The main stack and the MTP modules are made of it.

Shape legend: ``b`` batch, ``s`` positions, ``D`` model width, ``V`` vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from testtime.deepseek.config import DeepSeekV3Config
from testtime.deepseek.layers import MLP, norm
from testtime.deepseek.mla import MLA, AttentionMode, MLACache
from testtime.deepseek.moe import MoE

__all__ = ["DecoderLayer", "cross_entropy"]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``(b, s, V)`` logits against ``(b, s)`` targets (-100 ignored), in >= float32."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


class DecoderLayer(nn.Module):
    """Pre-norm block: ``h + MLA(norm(h))`` then ``+ FFN(norm(.))``, FFN dense for the first k layers else MoE.

    Args:
        config: the model config.
        layer_index: position in the stack (MTP modules continue the numbering).
    """

    def __init__(self, config: DeepSeekV3Config, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.input_layernorm = norm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = MLA(config)
        self.post_attention_layernorm = norm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp: MoE | MLP = (
            MoE(config)
            if config.is_moe_layer(layer_index)
            else MLP(config.hidden_size, config.intermediate_size, fp8=config.fp8)
        )

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *,
        cache: MLACache | None = None,
        cache_layer: int = 0,
        mode: AttentionMode | None = None,
    ) -> torch.Tensor:
        """``(b, s, D) -> (b, s, D)``; see :meth:`MLA.forward` for the cache arguments."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache=cache, layer=cache_layer, mode=mode)
        return x + self.mlp(self.post_attention_layernorm(x))
