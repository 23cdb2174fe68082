"""Titans language models (§4): LMM alone, MAC (eqs. 21-25), MAG (26-28), MAL (29-31) and the baseline.

Every block is pre-norm with residual connections and a SwiGLU feed-forward sublayer:

- ``lmm``:  x += Memory(x)                                       (the memory as the only sequence mixer)
- ``mal``:  x += Memory(x); x += SWA(x)                          (eqs. 29-31: memory layer, then attention)
- ``mag``:  x += gate(SWA(x), Memory(x))                          (eqs. 26-28)
- ``mac``:  per segment of ``window`` tokens (eqs. 21-25):
            h = M*_{prev}(q)                 retrieve with the memory at the segment start (no update)
            y = Attn([persistent || h || x]) over the segment
            M <- store y; o = gate(y, M*_t(y_t))  each token t reads the memory after its own write
- ``transformer``: x += SWA(x), the Transformer++ baseline with the same window.

``gate(a, b) = RMSNorm(a) * sigmoid(RMSNorm(b))`` (learned vector weights, then a non-linearity: §4.2's
"normalize ... using learnable vector-valued weights, followed by a non-linearity").

Persistent memory (§3.3): for MAG / MAL / LMM / transformer, N_p learned tokens are prepended to the input
(eqs. 26, 29) and never hidden by the attention window; for MAC each layer prepends its own N_p tokens to every
segment's attention (eq. 22).

Deviations and open choices (also in docs/fidelity/titans.md):
- MAC's attention is causal over the retrieved tokens too: x_t sees h_j only for j <= t (the paper's
  figure shows h as a fully visible prefix, which would let x_t see h_j = M*(q_j) of later tokens j).
  RoPE positions inside a segment: persistent 0..N_p-1, then h_j and x_j both at N_p + j.
- MAC's eq. 25 reads M*_t(y_t) per token: token t reads the memory after the writes of y_1..y_t of its
  segment (``memory.read="after"``), not after the whole segment. A read after the whole segment's update
  (eq. 24 written per segment) would let token t see y_j of later tokens j > t of its segment.
- MAC requires ``window % memory.chunk_size == 0`` so that segment ends are chunk ends.
- Defaults: the memory's output is RMS-normalised and theta_t capped at 1 / chunk size (stabilised
  defaults, not in the paper; ``MemoryConfig(norm=False, max_lr=...)`` gives the paper's plain memory).

Streaming: :meth:`TitansLM.init_state` / :meth:`TitansLM.forward` with a state continue a sequence; feeding
one token at a time gives the same logits as the parallel forward (tested), under ``torch.inference_mode``
too, since the memory's inner update uses analytic gradients.

Shapes: b batch, n tokens, D model width, h attention heads, d head width, w window, p persistent tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from testtime.nn import (
    CausalSelfAttention,
    KVCache,
    LMOutput,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    TransformerBlock,
)
from testtime.nn.sampling import sample_next
from testtime.titans.config import TitansConfig
from testtime.titans.memory import MemoryState, NeuralMemory

__all__ = ["TitansLM", "TitansState"]


# ------------------------------------------------------------------------------------------ attention
# The sliding-window attention with an always-visible prefix (SWA* of eqs. 26 and 30) and the Transformer++
# block are testtime.nn's: CausalSelfAttention over a bounded KVCache (the prefix and the last `window`
# positions), and TransformerBlock for the baseline.


def _gate(a: Tensor, b: Tensor, norm_a: RMSNorm, norm_b: RMSNorm) -> Tensor:
    """The combination a (x) b of eqs. 25 and 28: RMSNorm(a) * sigmoid(RMSNorm(b))."""
    return norm_a(a) * torch.sigmoid(norm_b(b))


# --------------------------------------------------------------------------------------------- blocks


@dataclass
class BlockState:
    """Per-block streaming state."""

    memory: MemoryState | None = None
    attn: KVCache = field(default_factory=lambda: KVCache(bounded=True))
    # MAC only: the memory weights at the segment start, the read path's conv cache, and the current
    # segment's attention keys / values.
    segment_weights: list[Tensor] | None = None
    read_conv: Tensor | None = None


class TitansBlock(nn.Module):
    """One block of the chosen variant (see the module docstring)."""

    def __init__(self, config: TitansConfig) -> None:
        super().__init__()
        cfg = self.config = config
        self.variant = cfg.variant
        self.rope = RotaryEmbedding(cfg.dim // cfg.num_attn_heads, theta=cfg.rope_base)
        if cfg.variant == "transformer":  # the Transformer++ baseline with the same window
            self.block = TransformerBlock(
                cfg.dim, cfg.num_attn_heads, mlp_hidden_dim=int(cfg.mlp_ratio * cfg.dim), window=cfg.window
            )
            self.memory = None
            return
        self.norm_mix = RMSNorm(cfg.dim)
        self.norm_mlp = RMSNorm(cfg.dim)
        self.mlp = SwiGLU(cfg.dim, int(cfg.mlp_ratio * cfg.dim))
        self.memory = NeuralMemory(cfg.memory)
        if cfg.variant in ("mag", "mal"):
            self.attn = CausalSelfAttention(cfg.dim, cfg.num_attn_heads, window=cfg.window)
        elif cfg.variant == "mac":
            self.attn = CausalSelfAttention(cfg.dim, cfg.num_attn_heads, window=None)
            self.persistent = nn.Parameter(torch.randn(cfg.num_persistent, cfg.dim) * 0.02)
        if cfg.variant == "mal":
            self.norm_attn = RMSNorm(cfg.dim)
        if cfg.variant in ("mag", "mac"):
            self.gate_norm_a, self.gate_norm_b = RMSNorm(cfg.dim), RMSNorm(cfg.dim)

    def init_state(self, batch_size: int) -> BlockState:
        """The state before the first token."""
        mem = self.memory.init_state(batch_size) if self.memory is not None else None
        state = BlockState(memory=mem)
        if self.variant == "mac":
            assert mem is not None
            state.segment_weights = mem.weights
        return state

    def forward(
        self, x: Tensor, positions: Tensor, state: BlockState, num_prefix: int
    ) -> tuple[Tensor, BlockState]:
        """x (b, n, D) at absolute positions (n,) -> (b, n, D), continuing ``state``."""
        if self.variant == "mac":
            x, state = self._mac(x, positions, state)
            return x + self.mlp(self.norm_mlp(x)), state
        cos, sin = self.rope(positions)
        cache = state.attn.copy()  # states are values: the caller's stays as it was
        attend = {"cache": cache, "num_prefix": num_prefix, "positions": positions}
        if self.variant == "transformer":
            return self.block(x, cos, sin, **attend), BlockState(attn=cache)
        assert self.memory is not None
        h = self.norm_mix(x)
        mem_state = state.memory
        if self.variant == "lmm":
            m, mem_state = self.memory(h, mem_state)
            x = x + m
        elif self.variant == "mal":
            m, mem_state = self.memory(h, mem_state)  # eq. 30: y = M(x~), x~ = [p || x] (eq. 29)
            x = x + m
            x = x + self.attn(self.norm_attn(x), cos, sin, **attend)  # eq. 31: o = SW-Attn(y)
        else:  # mag
            a = self.attn(h, cos, sin, **attend)  # eq. 27: y = SW-Attn*(x~), x~ = [p || x] (eq. 26)
            m, mem_state = self.memory(h, mem_state)  # M(x~)
            x = x + _gate(a, m, self.gate_norm_a, self.gate_norm_b)  # eq. 28: o = y (x) M(x~)
        return x + self.mlp(self.norm_mlp(x)), BlockState(memory=mem_state, attn=cache)

    def _mac(self, x: Tensor, positions: Tensor, state: BlockState) -> tuple[Tensor, BlockState]:
        """Memory as a context (eqs. 21-25), segment by segment; x may start or end inside a segment."""
        assert self.memory is not None
        w = self.config.window
        outs = []
        start = 0
        n = x.shape[1]
        while start < n:
            pos0 = int(positions[start])
            seg_off = pos0 % w
            if seg_off == 0:  # a new segment: snapshot the memory, drop the previous segment's keys
                assert state.memory is not None and not state.memory.pending
                state = BlockState(
                    memory=state.memory, attn=KVCache(), segment_weights=state.memory.weights,
                    read_conv=state.read_conv,
                )  # fmt: skip
            end = min(n, start + w - seg_off)
            out, state = self._mac_piece(x[:, start:end], seg_off, state)
            outs.append(out)
            start = end
        return torch.cat(outs, dim=1), state

    def _mac_piece(self, x: Tensor, seg_off: int, state: BlockState) -> tuple[Tensor, BlockState]:
        """Tokens seg_off .. seg_off + n - 1 of one segment."""
        assert self.memory is not None and state.segment_weights is not None
        n, num_p = x.shape[1], self.config.num_persistent
        xn = self.norm_mix(x)
        h, read_conv = self.memory.read(xn, state.segment_weights, state.read_conv)  # eq. 21
        local = torch.arange(seg_off, seg_off + n, device=x.device) + num_p
        cos, sin = self.rope(local)
        q, kx, vx = self.attn.project(xn, cos, sin)
        _, kh, vh = self.attn.project(h, cos, sin)
        cache = state.attn.copy()
        if cache.k is None:  # segment start: the persistent tokens' keys at positions 0..N_p-1 (eq. 22)
            p = self.persistent[None].expand(x.shape[0], -1, -1)
            prefix = torch.arange(num_p, device=x.device)
            _, kp, vp = self.attn.project(p, *self.rope(prefix))
            cache.update(kp, vp, positions=prefix)
        # keys: [persistent, earlier h and x of this segment, new h, new x]; h_j and x_j share position N_p + j
        k, v = cache.update(torch.cat([kh, kx], dim=2), torch.cat([vh, vx], dim=2), positions=local.repeat(2))
        y = self.attn.attend(  # eq. 23: causal over h too (x_t sees h_j for j <= t), persistent always
            q, k, v, num_prefix=num_p, q_positions=local, key_positions=cache.positions
        )
        m, mem_state = self.memory(y, state.memory)  # eq. 24 (store y), then per token read M*_t(y_t)
        o = _gate(y, m, self.gate_norm_a, self.gate_norm_b)  # eq. 25: o_t = y_t (x) M*_t(y_t)
        new = BlockState(
            memory=mem_state, attn=cache, segment_weights=state.segment_weights,
            read_conv=read_conv,
        )  # fmt: skip
        return x + o, new


# ---------------------------------------------------------------------------------------------- model


@dataclass
class TitansState:
    """Streaming state of a :class:`TitansLM` for a batch: one entry per block, and the next position."""

    blocks: list[BlockState]
    position: int

    def tensors(self) -> dict[str, Tensor]:
        """Flatten to named tensors (``torch.save`` / safetensors)."""
        out: dict[str, Tensor] = {"position": torch.tensor(self.position)}
        for i, blk in enumerate(self.blocks):
            if blk.memory is not None:
                out.update({f"{i}.memory.{k}": t for k, t in blk.memory.tensors().items()})
            for name, attr in (("k", "k"), ("v", "v"), ("pos", "positions")):
                t = getattr(blk.attn, attr)
                if t is not None:
                    out[f"{i}.attn.{name}"] = t
            if blk.segment_weights is not None:
                out.update({f"{i}.segment.{j}": t for j, t in enumerate(blk.segment_weights)})
            if blk.read_conv is not None:
                out[f"{i}.read_conv"] = blk.read_conv
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], num_blocks: int) -> TitansState:
        """Inverse of :meth:`tensors`."""
        blocks = []
        for i in range(num_blocks):
            pre = f"{i}."
            mine = {k[len(pre) :]: t for k, t in tensors.items() if k.startswith(pre)}
            mem = {k[len("memory.") :]: t for k, t in mine.items() if k.startswith("memory.")}
            seg = sorted((k for k in mine if k.startswith("segment.")), key=lambda k: int(k.split(".")[1]))
            blocks.append(
                BlockState(
                    memory=MemoryState.from_tensors(mem) if mem else None,
                    attn=_cache(mine.get("attn.k"), mine.get("attn.v"), mine.get("attn.pos")),
                    segment_weights=[mine[k] for k in seg] or None,
                    read_conv=mine.get("read_conv"),
                )
            )
        return cls(blocks=blocks, position=int(tensors["position"]))


def _cache(k: Tensor | None, v: Tensor | None, positions: Tensor | None) -> KVCache:
    """A bounded attention cache holding saved keys, values and their positions."""
    cache = KVCache(bounded=True)
    cache.k, cache.v, cache.positions = k, v, positions
    cache.length = 0 if positions is None else int(positions.max()) + 1
    return cache


def _upgrade_state_dict(state_dict: dict[str, Tensor], prefix: str, variant: str) -> None:
    """Rename the keys of checkpoints written before the attention became testtime.nn's (in place).

    Old blocks had a fused ``attn.qkv`` projection and ``attn.out``; the baseline's sublayers sat directly
    in the block (``norm_mix``, ``attn``, ``norm_mlp``, ``mlp``) instead of in ``block``.
    """
    for key in [k for k in state_dict if k.startswith(prefix + "blocks.")]:
        head, _, rest = key[len(prefix) :].partition(".")
        index, _, name = rest.partition(".")
        base = f"{prefix}{head}.{index}."
        if variant == "transformer":
            for old, new in (
                ("norm_mix.", "attn_norm."),
                ("norm_mlp.", "mlp_norm."),
                ("attn.", "attn."),
                ("mlp.", "mlp."),
            ):
                if name.startswith(old):
                    name = "block." + new + name[len(old) :]
                    break
        attn = "block.attn." if variant == "transformer" else "attn."
        if name == attn + "qkv.weight":
            q, k, v = state_dict.pop(key).chunk(3, dim=0)
            for part, value in (("q", q), ("k", k), ("v", v)):
                state_dict[f"{base}{attn}{part}_proj.weight"] = value
            continue
        if name == attn + "out.weight":
            name = attn + "o_proj.weight"
        if base + name != key:
            state_dict[base + name] = state_dict.pop(key)


class TitansLM(nn.Module):
    """A Titans language model: embeddings, blocks of the chosen variant, final norm, LM head.

    ``forward(input_ids, labels=None)`` returns the mean next-token cross-entropy when labels are given
    (the trainer's plug-in API), else the logits; ``step`` continues a stream with an explicit state.

    Args:
        config: the :class:`~testtime.titans.config.TitansConfig`.
    """

    def __init__(self, config: TitansConfig) -> None:
        super().__init__()
        cfg = self.config = config
        if cfg.variant == "mac" and cfg.window % cfg.memory.chunk_size:
            raise ValueError(
                f"MAC needs window ({cfg.window}) to be a multiple of memory.chunk_size ({cfg.memory.chunk_size})"
            )
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList([TitansBlock(cfg) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        # input-level persistent tokens (eqs. 26, 29); MAC keeps them per layer instead (eq. 22)
        self.num_prefix = cfg.num_persistent if cfg.variant != "mac" else 0
        self.persistent = (
            nn.Parameter(torch.randn(self.num_prefix, cfg.dim) * 0.02) if self.num_prefix else None
        )
        self.register_load_state_dict_pre_hook(
            lambda module, state_dict, prefix, *args: _upgrade_state_dict(state_dict, prefix, cfg.variant)
        )

    def fsdp_modules(self) -> list[nn.Module]:
        """FSDP2 shards the whole model as one unit (the trainer's hook; see docs/train.md).

        ``init_state`` reads every block's initial memory weights before that block runs, which per-block
        sharding does not allow (those parameters would still be sharded DTensors then).
        """
        return []

    def init_state(self, batch_size: int) -> TitansState:
        """The state before the first token (the persistent prefix already read)."""
        state = TitansState(blocks=[blk.init_state(batch_size) for blk in self.blocks], position=0)
        if self.persistent is not None:
            prefix = self.persistent[None].expand(batch_size, -1, -1)
            _, state = self._run(prefix, state)
        return state

    def _run(self, x: Tensor, state: TitansState) -> tuple[Tensor, TitansState]:
        positions = torch.arange(state.position, state.position + x.shape[1], device=x.device)
        new_blocks = []
        for blk, bs in zip(self.blocks, state.blocks, strict=True):
            x, bs = blk(x, positions, bs, self.num_prefix)
            new_blocks.append(bs)
        return x, TitansState(blocks=new_blocks, position=state.position + x.shape[1])

    def step(self, input_ids: Tensor, state: TitansState | None = None) -> tuple[Tensor, TitansState]:
        """Continue the sequences in ``state`` with ``input_ids`` (b, n): logits (b, n, vocab) and the new state."""
        if state is None:
            state = self.init_state(input_ids.shape[0])
        x, state = self._run(self.embed(input_ids), state)
        return self.head(self.norm(x)), state

    def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> LMOutput:
        """Parallel forward over whole sequences (b, n) (the trainer's plug-in API, docs/train.md).

        Returns:
            An ``LMOutput`` with ``logits`` (b, n, vocab) and, when ``labels`` (b, n; the next tokens, -100
            ignored) are given, ``loss``, the mean next-token cross-entropy.
        """
        logits, _ = self.step(input_ids)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return LMOutput(logits=logits, loss=loss)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        state: TitansState | None = None,
    ) -> tuple[Tensor, TitansState]:
        """Greedy (temperature 0) or sampled continuation of a batch, one state per sequence.

        Args:
            input_ids: (b, n) prompts (same length; the memory keeps learning from them).
            max_new_tokens: tokens to add.
            temperature: 0 for greedy.
            state: continue these streams instead of starting fresh.

        Returns:
            (tokens (b, max_new_tokens), the state after them).
        """
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        logits, state = self.step(input_ids, state)
        out = []
        for index in range(max_new_tokens):
            nxt = sample_next(logits[:, -1], temperature=temperature)[:, None]
            out.append(nxt)
            if index + 1 < max_new_tokens:
                logits, state = self.step(nxt, state)
        return torch.cat(out, dim=1), state
