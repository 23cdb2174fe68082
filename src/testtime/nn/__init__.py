"""Shared neural-network blocks: RMSNorm, rotary embeddings (+YaRN), SwiGLU, causal attention with KV cache,
the Transformer++ block, and (``testtime.nn.sampling``) the token sampler.

Only boring, well-known pieces live here; each system's own ideas live in its package.
"""

from __future__ import annotations

from testtime.nn.attention import CausalSelfAttention, KVCache, attention_mask, causal_attention
from testtime.nn.mlp import SwiGLU, swiglu_hidden_dim
from testtime.nn.norm import RMSNorm, rms, rms_norm
from testtime.nn.output import LMOutput
from testtime.nn.rope import (
    RotaryEmbedding,
    YarnConfig,
    apply_rope,
    rope_cos_sin,
    rope_inv_freq,
    yarn_from_rope_scaling,
    yarn_mscale,
)
from testtime.nn.transformer import TransformerBlock

__all__ = [
    "CausalSelfAttention",
    "KVCache",
    "LMOutput",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "TransformerBlock",
    "YarnConfig",
    "apply_rope",
    "attention_mask",
    "causal_attention",
    "rms",
    "rms_norm",
    "rope_cos_sin",
    "rope_inv_freq",
    "swiglu_hidden_dim",
    "yarn_from_rope_scaling",
    "yarn_mscale",
]
