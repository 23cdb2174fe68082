"""Configuration of a DeepSeek-V3 model (DeepSeek-AI, "DeepSeek-V3 Technical Report", arXiv 2412.19437).

Field names follow transformers' ``DeepseekV3Config`` (and the official ``config.json``) so that a
checkpoint's config maps one to one; the training-only fields (balancing, multi-token prediction weight,
FP8 simulation) are ours and are not written to ``config.json`` except under the ``testtime`` key.

Defaults are the paper's (Section 4.2, "Model Hyper-Parameters" and "Training Hyper-Parameters").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from testtime.nn.rope import yarn_mscale  # re-exported: DeepSeek's softmax-scale correction

__all__ = ["DeepSeekV3Config", "yarn_mscale"]

# transformers / official config.json fields this config reads and writes with the same name.
_HF_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "n_shared_experts",
    "n_routed_experts",
    "routed_scaling_factor",
    "kv_lora_rank",
    "q_lora_rank",
    "qk_rope_head_dim",
    "qk_nope_head_dim",
    "v_head_dim",
    "n_group",
    "topk_group",
    "num_experts_per_tok",
    "first_k_dense_replace",
    "norm_topk_prob",
    "scoring_func",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_interleave",
    "tie_word_embeddings",
    "num_nextn_predict_layers",
    "attention_bias",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)

# Our training-only fields, kept in config.json under "testtime".
_OWN_FIELDS = (
    "bias_update_speed",
    "bias_update_stop_step",
    "balance_loss",
    "balance_loss_alpha",
    "balance_loss_counts",
    "group_score_topk",
    "mtp_loss_weight",
    "mtp_loss_weight_final",
    "mtp_weight_switch_step",
    "fp8",
)


@dataclass(kw_only=True)
class DeepSeekV3Config:
    """Hyper-parameters of DeepSeek-V3; the defaults are the paper's 671B model (Section 4.2).

    Attributes:
        vocab_size: vocabulary size (128K byte-level BPE in the paper: 129,280 entries).
        hidden_size: model width d (7168).
        intermediate_size: FFN width of the first-k dense layers (18432).
        moe_intermediate_size: width of each routed and shared expert (2048).
        num_hidden_layers: Transformer layers of the main model (61).
        num_attention_heads: attention heads n_h (128).
        n_shared_experts: shared experts N_s per MoE layer (1); they form one SwiGLU of width N_s * expert width.
        n_routed_experts: routed experts N_r per MoE layer (256).
        num_experts_per_tok: routed experts K_r activated per token (8).
        routed_scaling_factor: multiplier on the routed experts' gates (2.5 in the release; not in the paper).
        kv_lora_rank: KV compression dimension d_c (512).
        q_lora_rank: query compression dimension d'_c (1536); None projects queries directly (V2-Lite).
        qk_rope_head_dim: per-head dimension d_h^R of the decoupled rope query and the shared rope key (64).
        qk_nope_head_dim: per-head dimension d_h of the compressed (non-rope) query and key (128).
        v_head_dim: per-head value dimension (128).
        n_group: expert groups for node-limited routing (8 = nodes in the paper; 1 disables the limit).
        topk_group: groups a token may be sent to, M in the paper (4).
        group_score_topk: a group's score is the sum of its this-many highest biased affinities; None is the
            paper's K_r / M (rounded up), 2 the released code's fixed rule (equal for V3: 8 / 4). A
            ``config.json`` without our ``testtime`` section gets 2, the rule its weights were trained with.
        first_k_dense_replace: the first k layers use a dense FFN instead of MoE (3).
        norm_topk_prob: normalise the selected affinities to sum to one (eq. 13).
        scoring_func: "sigmoid" (V3, eq. 15) or "softmax" (V2).
        max_position_embeddings: longest context (163840 after YaRN).
        rms_norm_eps: RMSNorm epsilon.
        rope_theta: RoPE base (10000).
        rope_scaling: YaRN parameters (``factor``, ``original_max_position_embeddings``, ``beta_fast``,
            ``beta_slow``, ``mscale``, ``mscale_all_dim``) or None for plain RoPE.
        rope_interleave: rotary dimensions are adjacent pairs (the release's layout) rather than two halves.
        tie_word_embeddings: share the input embedding and the output head (False in V3).
        num_nextn_predict_layers: MTP depth D (1).
        attention_bias: biases on the down projections and the output projection (False).
        initializer_range: std of the normal initialisation (0.006 in the paper).
        bos_token_id, eos_token_id, pad_token_id: special token ids, stored for tokenizers and generation.
        bias_update_speed: gamma of the auxiliary-loss-free balancing (0.001; 0 disables the bias update).
        bias_update_stop_step: optimizer steps after which gamma is 0 (the paper: after 14.3T of 14.8T
            tokens); None never stops.
        balance_loss: "none", "sequence" (eqs. 17-20, complementary) or "batch" (the batch-wise baseline).
        balance_loss_alpha: alpha of the balance loss (0.0001).
        balance_loss_counts: which experts f_i of eq. 18 counts per token: "affinities" (the paper: the K_r
            highest unbiased affinities) or "routed" (the experts actually chosen, after bias and group limit).
        mtp_loss_weight: lambda of the MTP loss (0.3 for the first 10T tokens, 0.1 after).
        mtp_loss_weight_final: lambda after ``mtp_weight_switch_step`` optimizer steps (0.1).
        mtp_weight_switch_step: when lambda switches (None: never).
        fp8: simulate FP8 (E4M3, fine-grained scaling) in the linear layers of the blocks.
    """

    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432
    moe_intermediate_size: int = 2048
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    n_shared_experts: int = 1
    n_routed_experts: int = 256
    num_experts_per_tok: int = 8
    routed_scaling_factor: float = 2.5
    kv_lora_rank: int = 512
    q_lora_rank: int | None = 1536
    qk_rope_head_dim: int = 64
    qk_nope_head_dim: int = 128
    v_head_dim: int = 128
    n_group: int = 8
    topk_group: int = 4
    group_score_topk: int | None = None
    first_k_dense_replace: int = 3
    norm_topk_prob: bool = True
    scoring_func: str = "sigmoid"
    max_position_embeddings: int = 163840
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = field(
        default_factory=lambda: {
            "factor": 40.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        }
    )
    rope_interleave: bool = True
    tie_word_embeddings: bool = False
    num_nextn_predict_layers: int = 1
    attention_bias: bool = False
    initializer_range: float = 0.006
    bos_token_id: int | None = 0
    eos_token_id: int | None = 1
    pad_token_id: int | None = None
    # training-only (ours)
    bias_update_speed: float = 0.001
    bias_update_stop_step: int | None = None
    balance_loss: str = "sequence"
    balance_loss_alpha: float = 0.0001
    balance_loss_counts: str = "affinities"
    mtp_loss_weight: float = 0.3
    mtp_loss_weight_final: float = 0.1
    mtp_weight_switch_step: int | None = None
    fp8: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size <= 0 or self.num_attention_heads <= 0 or self.num_hidden_layers < 0:
            raise ValueError("hidden_size, num_attention_heads must be positive, num_hidden_layers >= 0")
        if self.n_routed_experts % self.n_group:
            raise ValueError(
                f"n_routed_experts={self.n_routed_experts} is not divisible by n_group={self.n_group}"
            )
        if not 1 <= self.topk_group <= self.n_group:
            raise ValueError(f"topk_group={self.topk_group} must be in [1, n_group={self.n_group}]")
        experts_reachable = self.topk_group * (self.n_routed_experts // self.n_group)
        if not 1 <= self.num_experts_per_tok <= experts_reachable:
            raise ValueError(
                f"num_experts_per_tok={self.num_experts_per_tok} must be in [1, {experts_reachable}] "
                "(topk_group groups of n_routed_experts / n_group experts)"
            )
        if self.scoring_func not in ("sigmoid", "softmax"):
            raise ValueError(f"scoring_func must be 'sigmoid' or 'softmax', not {self.scoring_func!r}")
        if self.balance_loss not in ("none", "sequence", "batch"):
            raise ValueError(f"balance_loss must be 'none', 'sequence' or 'batch', not {self.balance_loss!r}")
        if self.balance_loss_counts not in ("affinities", "routed"):
            raise ValueError(
                f"balance_loss_counts must be 'affinities' or 'routed', not {self.balance_loss_counts!r}"
            )
        if self.group_score_topk is not None and self.group_score_topk < 1:
            raise ValueError(f"group_score_topk must be >= 1 or None, got {self.group_score_topk}")
        if self.qk_rope_head_dim % 2:
            raise ValueError("qk_rope_head_dim must be even")
        if self.num_nextn_predict_layers < 0:
            raise ValueError("num_nextn_predict_layers must be >= 0")

    # ---- derived -----------------------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        """Query/key width per head: d_h + d_h^R."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        """Attention scale 1/sqrt(d_h + d_h^R), times YaRN's mscale(s, mscale_all_dim)^2 when extended."""
        scale = self.qk_head_dim**-0.5
        if self.rope_scaling is not None:
            mscale_all_dim = self.rope_scaling.get("mscale_all_dim", 0) or 0
            if mscale_all_dim:
                m = yarn_mscale(self.rope_scaling["factor"], mscale_all_dim)
                scale = scale * m * m
        return scale

    def is_moe_layer(self, layer_index: int) -> bool:
        """Whether layer ``layer_index`` (MTP modules continue the numbering) has an MoE FFN."""
        return layer_index >= self.first_k_dense_replace

    def kv_cache_values_per_token(self) -> int:
        """Cached values per token over all main layers: (d_c + d_h^R) * layers."""
        return (self.kv_lora_rank + self.qk_rope_head_dim) * self.num_hidden_layers

    def replace(self, **changes: Any) -> DeepSeekV3Config:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ---- presets -----------------------------------------------------------------------------------
    @classmethod
    def v3_671b(cls, **overrides: Any) -> DeepSeekV3Config:
        """DeepSeek-V3 (671B total, 37B active): the paper's Section 4.2 and the released config."""
        return cls(**overrides)

    @classmethod
    def v2_lite_16b(cls, **overrides: Any) -> DeepSeekV3Config:
        """DeepSeek-V2-Lite's shape (15.7B total, 2.4B active): no query compression, 64 experts, softmax gate."""
        values: dict[str, Any] = dict(
            vocab_size=102400,
            hidden_size=2048,
            intermediate_size=10944,
            moe_intermediate_size=1408,
            num_hidden_layers=27,
            num_attention_heads=16,
            n_shared_experts=2,
            n_routed_experts=64,
            num_experts_per_tok=6,
            routed_scaling_factor=1.0,
            kv_lora_rank=512,
            q_lora_rank=None,
            n_group=1,
            topk_group=1,
            first_k_dense_replace=1,
            norm_topk_prob=False,
            scoring_func="softmax",
            rope_scaling={
                "factor": 40.0,
                "original_max_position_embeddings": 4096,
                "beta_fast": 32,
                "beta_slow": 1,
                "mscale": 0.707,
                "mscale_all_dim": 0.707,
            },
            num_nextn_predict_layers=0,
            bos_token_id=100000,
            eos_token_id=100001,
            bias_update_speed=0.0,
            balance_loss="sequence",
            balance_loss_alpha=0.001,
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def tiny(cls, **overrides: Any) -> DeepSeekV3Config:
        """A test-sized V3: every mechanism on (q compression, YaRN, group routing, dense + MoE, one MTP module)."""
        values: dict[str, Any] = dict(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            moe_intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            n_shared_experts=1,
            n_routed_experts=8,
            num_experts_per_tok=2,
            kv_lora_rank=32,
            q_lora_rank=48,
            qk_rope_head_dim=8,
            qk_nope_head_dim=16,
            v_head_dim=16,
            n_group=2,  # K_r / M = 2 / 1: the paper's group score is the released code's top-2 sum
            topk_group=1,
            first_k_dense_replace=1,
            max_position_embeddings=1024,
            rope_scaling={
                "factor": 4.0,
                "original_max_position_embeddings": 256,
                "beta_fast": 32,
                "beta_slow": 1,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
            },
            initializer_range=0.02,
        )
        values.update(overrides)
        return cls(**values)

    # ---- config.json -------------------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """The transformers-5 ``config.json`` content (``model_type`` deepseek_v3), our extras under "testtime"."""
        out: dict[str, Any] = {
            "architectures": ["DeepseekV3ForCausalLM"],
            "model_type": "deepseek_v3",
            "hidden_act": "silu",
            "num_key_value_heads": self.num_attention_heads,
        }
        for name in _HF_FIELDS:
            out[name] = getattr(self, name)
        rope: dict[str, Any] = {"rope_theta": self.rope_theta}
        if self.rope_scaling is None:
            rope["rope_type"] = "default"
        else:
            rope.update(self.rope_scaling)
            rope["rope_type"] = "yarn"
        out["rope_parameters"] = rope
        out["testtime"] = {name: getattr(self, name) for name in _OWN_FIELDS}
        return out

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any], **overrides: Any) -> DeepSeekV3Config:
        """Read a transformers (v4 or v5) or official DeepSeek ``config.json``.

        Args:
            data: the parsed JSON.
            **overrides: fields to set after reading.

        Returns:
            The config.

        Raises:
            ValueError: the file describes another architecture or an unsupported option.
        """
        model_type = data.get("model_type", "deepseek_v3")
        if model_type not in ("deepseek_v3", "deepseek_v2"):
            raise ValueError(f"not a DeepSeek-V3 config: model_type={model_type!r}")
        if data.get("hidden_act", "silu") != "silu":
            raise ValueError(f"only hidden_act='silu' is supported, not {data['hidden_act']!r}")
        heads = data.get("num_attention_heads")
        if data.get("num_key_value_heads") not in (None, heads):
            raise ValueError(
                "MLA has no grouped key/value heads: num_key_value_heads must equal num_attention_heads"
            )
        values: dict[str, Any] = {name: data[name] for name in _HF_FIELDS if name in data}
        if isinstance(values.get("eos_token_id"), list):
            values["eos_token_id"] = values["eos_token_id"][0]
        for key in ("n_group", "topk_group"):
            if values.get(key) is None:
                values[key] = 1
        if "num_nextn_predict_layers" not in values and "num_mtp_layers" in data:
            values["num_nextn_predict_layers"] = data["num_mtp_layers"]
        topk_method = data.get("topk_method")
        if topk_method == "greedy":  # V2: no group limit
            values["n_group"], values["topk_group"] = 1, 1
        rope = dict(data.get("rope_parameters") or data.get("rope_scaling") or {})
        values["rope_theta"] = float(rope.get("rope_theta", data.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type in (None, "default"):
            values["rope_scaling"] = None
        elif rope_type in ("yarn", "deepseek_yarn"):
            values["rope_scaling"] = {
                k: rope[k]
                for k in (
                    "factor",
                    "original_max_position_embeddings",
                    "beta_fast",
                    "beta_slow",
                    "mscale",
                    "mscale_all_dim",
                )
                if k in rope
            }
        else:
            raise ValueError(f"unsupported rope type {rope_type!r} (only default and yarn)")
        if values.get("rope_scaling") is not None and "attention_factor" in rope:
            raise ValueError("an explicit YaRN attention_factor is not supported")
        # weights trained by the released code (or transformers) scored groups by their top 2 affinities
        values["group_score_topk"] = 2
        values.update(data.get("testtime", {}))
        values.update(overrides)
        return cls(**values)
