"""Configurations of the Titans neural memory and of the LMM / MAC / MAG / MAL models.

Every choice the paper (Behrouz, Zhong, Mirrokni, arXiv 2501.00663) leaves open is a field here, with the
default we chose and the reason in its comment; docs/fidelity/titans.md lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Literal

__all__ = ["ABLATIONS", "MemoryConfig", "TitansConfig"]

ReadMode = Literal["after", "before", "chunk_start"]
GateMode = Literal["token", "chunk"]
Activation = Literal["silu", "gelu"]
Variant = Literal["lmm", "mac", "mag", "mal", "transformer"]


@dataclass(kw_only=True)
class MemoryConfig:
    """The neural long-term memory (§3.1-3.2, §4.4).

    Attributes:
        dim: model width the memory reads from and writes to.
        num_heads: independent memories per layer (each its own MLP over ``head_dim`` features).
        head_dim: features per head (None: dim // num_heads).
        depth: L_M, layers of the memory MLP; 1 is a linear memory (Table 5 "linear memory").
        expansion: hidden width of the MLP = expansion * head_dim (only used when depth >= 2).
        activation: the MLP's non-linearity (the paper does not name one).
        residual: memory computes k + MLP(k) instead of MLP(k) (not in the paper; off by default).
        norm: the memory MLP's output is RMS-normalised, M(k) = MLP(k) / rms(MLP(k)) (not in the paper;
            on by default: without it gradient descent on a deep memory diverged within tens of training
            steps in our runs, as its curvature grows with its weights; the normalisation makes the
            memory scale-invariant, as TTT's LayerNorm does). False is the paper's plain MLP.
        chunk_size: c (the paper writes b), tokens whose gradients are taken at the same (chunk-start)
            weights (eq. 16).
        gates: "token": theta_t, eta_t, alpha_t per token (eqs. 13-14); "chunk": one value per chunk,
            the paper's faster option (§3.2), computed from the chunk's first token so that it stays causal.
        read: which weights token t reads (eq. 15): "after" its own write (M_t), "before" it (M_{t-1}), or
            the chunk-start weights (what titans-pytorch does).
        conv_kernel: width of the causal depthwise convolution after the q/k/v projections (§4.4); 0 disables
            it (Table 5 "w/o convolution").
        qk_l2norm: l2-normalise queries and keys (§4.4).
        momentum: surprise with momentum (eq. 10); False is Table 5 "w/o momentum" (eta = 0).
        weight_decay: the forgetting gate alpha_t (eq. 13); False is Table 5 "w/o weight decay".
        learned_init: M_0 is a learned parameter per head (True) or zero (False, only for depth 1, because a
            zero deep MLP has zero gradient for every layer but the last).
        max_lr: theta_t = max_lr * sigmoid(x w_theta + b_theta); None: 1 / chunk_size, the largest rate at
            which a chunk of identical unit-norm keys stays stable for a linear memory with any momentum
            (inside a chunk the gradients add up at the same weights).
        theta_bias, eta_bias, alpha_bias: initial biases of the gate projections (weights start at zero,
            so training starts from theta = max_lr / 2, eta = 0.5, alpha ~ 0.007).
        output_norm: RMS-normalise each head's retrieved value before the output projection (§4.4).
        output_gate: multiply by SiLU(x W_g) before the output projection (§4.4, "gating").
        checkpoint_every: chunks between stored memory states in the backward pass; the chunks in between
            are recomputed. None: about sqrt(number of chunks), memory O(sqrt(n)) states. 0: no
            recomputation, plain autograd through the chunk loop (faster, stores every chunk's weights).
    """

    dim: int = 384
    num_heads: int = 4
    head_dim: int | None = None
    depth: int = 2
    expansion: float = 4.0
    activation: Activation = "silu"
    residual: bool = False
    norm: bool = True
    chunk_size: int = 64
    gates: GateMode = "token"
    read: ReadMode = "after"
    conv_kernel: int = 4
    qk_l2norm: bool = True
    momentum: bool = True
    weight_decay: bool = True
    learned_init: bool = True
    max_lr: float | None = None
    theta_bias: float = 0.0
    eta_bias: float = 0.0
    alpha_bias: float = -5.0
    output_norm: bool = True
    output_gate: bool = True
    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        if self.dim <= 0 or self.num_heads <= 0:
            raise ValueError("dim and num_heads must be positive")
        if self.head_dim is None:
            if self.dim % self.num_heads:
                raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
            self.head_dim = self.dim // self.num_heads
        if self.depth < 1:
            raise ValueError(f"depth (L_M) must be >= 1, got {self.depth}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.conv_kernel < 0:
            raise ValueError("conv_kernel must be >= 0")
        if self.gates not in ("token", "chunk"):
            raise ValueError(f"gates must be 'token' or 'chunk', got {self.gates!r}")
        if self.read not in ("after", "before", "chunk_start"):
            raise ValueError(f"read must be 'after', 'before' or 'chunk_start', got {self.read!r}")
        if self.activation not in ("silu", "gelu"):
            raise ValueError(f"activation must be 'silu' or 'gelu', got {self.activation!r}")
        if not self.learned_init and self.depth > 1:
            raise ValueError("learned_init=False (M_0 = 0) only works for a linear memory (depth 1)")
        if self.checkpoint_every is not None and self.checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0 or None")

    @property
    def lr_cap(self) -> float:
        """The effective max_lr (``max_lr``, or 1 / chunk_size when None)."""
        return self.max_lr if self.max_lr is not None else 1.0 / self.chunk_size

    @property
    def hidden_dim(self) -> int:
        """Width of the memory MLP's hidden layers."""
        assert self.head_dim is not None
        return max(1, int(self.head_dim * self.expansion))

    @property
    def layer_dims(self) -> list[tuple[int, int]]:
        """(d_in, d_out) of each of the L_M weight matrices."""
        assert self.head_dim is not None
        d, e = self.head_dim, self.hidden_dim
        dims = [d] + [e] * (self.depth - 1) + [d]
        return list(zip(dims[:-1], dims[1:], strict=True))

    @classmethod
    def tiny(cls, **overrides: object) -> MemoryConfig:
        """A memory small enough for tests (dim 16, 2 heads, depth 2, chunk 4)."""
        base: dict[str, object] = dict(dim=16, num_heads=2, depth=2, expansion=2.0, chunk_size=4)
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]


# Table 5's ablations: name -> (field of MemoryConfig, or num_persistent of TitansConfig; value).
ABLATIONS: dict[str, tuple[str, object]] = {
    "linear_memory": ("depth", 1),
    "no_conv": ("conv_kernel", 0),
    "no_momentum": ("momentum", False),
    "no_weight_decay": ("weight_decay", False),
    "no_persistent": ("num_persistent", 0),
}


@dataclass(kw_only=True)
class TitansConfig:
    """A Titans language model (§4): LMM alone, MAC, MAG or MAL, or the Transformer++ baseline.

    Attributes:
        variant: "lmm" (memory layers only), "mac" (memory as a context, eqs. 21-25), "mag" (memory as a
            gate, eqs. 26-28), "mal" (memory as a layer, eqs. 29-31) or "transformer" (sliding-window
            attention only, the baseline with the same window).
        vocab_size: tokens.
        dim: model width.
        num_layers: blocks.
        num_attn_heads: attention heads.
        window: attention window: the segment length of MAC, the sliding window of MAG / MAL / transformer.
        num_persistent: N_p persistent memory tokens (§3.3); 0 is Table 5 "w/o persistent memory".
        mlp_ratio: SwiGLU hidden width = mlp_ratio * dim.
        memory: the neural memory of every block.
        tie_embeddings: share input embedding and output head.
        rope_base: rotary embedding base.
        ablations: Table 5 switches applied on top of the rest: "linear_memory" (memory depth 1),
            "no_conv", "no_momentum", "no_weight_decay", "no_persistent" (e.g. ``--set
            model_config.ablations=[no_conv]``).
    """

    variant: Variant = "mac"
    vocab_size: int = 256
    dim: int = 384
    num_layers: int = 4
    num_attn_heads: int = 4
    window: int = 128
    num_persistent: int = 4
    mlp_ratio: float = 4.0
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    tie_embeddings: bool = True
    rope_base: float = 10000.0
    ablations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.memory, dict):  # from a saved YAML / JSON config
            unknown = sorted(set(self.memory) - {f.name for f in fields(MemoryConfig)})
            if unknown:
                known = ", ".join(f.name for f in fields(MemoryConfig))
                raise ValueError(f"unknown memory field(s) {unknown}; known: {known}")
            self.memory = MemoryConfig(**self.memory)
        if not isinstance(self.memory, MemoryConfig):
            raise ValueError(f"memory must be a MemoryConfig or a mapping of its fields, got {self.memory!r}")
        if self.memory.dim != self.dim:  # the memory follows the model width (head_dim re-derived)
            self.memory = replace(self.memory, dim=self.dim, head_dim=None)
        if self.variant not in ("lmm", "mac", "mag", "mal", "transformer"):
            raise ValueError(f"unknown variant {self.variant!r}")
        unknown = sorted(set(self.ablations) - set(ABLATIONS))
        if unknown:
            raise ValueError(f"unknown ablation(s) {unknown}; known: {', '.join(ABLATIONS)}")
        changes = {field_: value for name, (field_, value) in ABLATIONS.items() if name in self.ablations}
        if "num_persistent" in changes:
            self.num_persistent = changes.pop("num_persistent")
        if changes:
            self.memory = replace(self.memory, **changes)
        if self.dim % self.num_attn_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_attn_heads {self.num_attn_heads}")
        if self.window < 1 or self.num_persistent < 0:
            raise ValueError("window must be >= 1 and num_persistent >= 0")
        if self.variant == "mac" and self.window % self.memory.chunk_size:
            raise ValueError(
                f"MAC needs window ({self.window}) to be a multiple of memory.chunk_size "
                f"({self.memory.chunk_size}): segments end on chunk boundaries"
            )

    @classmethod
    def tiny(cls, variant: Variant = "mac", **overrides: object) -> TitansConfig:
        """A model for tests and the demo: dim 32, 2 layers, window 8, chunk 4."""
        memory = MemoryConfig(dim=32, num_heads=2, depth=2, expansion=2.0, chunk_size=4)
        base: dict[str, object] = dict(
            variant=variant, vocab_size=64, dim=32, num_layers=2, num_attn_heads=2, window=8,
            num_persistent=2, mlp_ratio=2.0, memory=memory,
        )  # fmt: skip
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    @classmethod
    def small(cls, variant: Variant = "mac", **overrides: object) -> TitansConfig:
        """Trains in minutes on 2 CPU cores: dim 128, 4 layers, window 64, memory chunk 16, byte vocabulary."""
        memory = MemoryConfig(dim=128, num_heads=4, depth=2, expansion=2.0, chunk_size=16)
        base: dict[str, object] = dict(
            variant=variant, vocab_size=257, dim=128, num_layers=4, num_attn_heads=4, window=64,
            num_persistent=4, mlp_ratio=3.0, memory=memory,
        )  # fmt: skip
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    @classmethod
    def paper_400m(cls, variant: Variant = "mac") -> TitansConfig:
        """The paper's 400M-parameter scale (§5.1: 400M params trained on 15B tokens; width and depth ours)."""
        memory = MemoryConfig(dim=1024, num_heads=16, depth=2, chunk_size=64)
        return cls(
            variant=variant, vocab_size=32000, dim=1024, num_layers=24, num_attn_heads=16, window=2048,
            num_persistent=16, memory=memory,
        )  # fmt: skip
