"""Titans language models (§4): LMM alone, MAC (eqs. 21-25), MAG (26-28), MAL (29-31) and the baseline.

Every block is pre-norm with residual connections and a SwiGLU feed-forward sublayer:

- ``lmm``:  x += Memory(x)                                       (the memory as the only sequence mixer)
- ``mal``:  x += Memory(x); x += SWA(x)                          (eqs. 29-31: memory layer, then attention)
- ``mag``:  x += gate(SWA(x), Memory(x))                          (eqs. 26-28)
- ``mac``:  per segment of ``window`` tokens (eqs. 21-25):
            h = M*_{prev}(q)                 retrieve with the memory at the segment start (no update)
            y = Attn([persistent || h || x]) over the segment
            M <- store y; o = gate(y, M*(y))  the read after the update
- ``transformer``: x += SWA(x), the Transformer++ baseline with the same window.

``gate(a, b) = RMSNorm(a) * sigmoid(RMSNorm(b))`` (learned vector weights, then a non-linearity: §4.2's
"normalize ... using learnable vector-valued weights, followed by a non-linearity").

Persistent memory (§3.3): for MAG / MAL / LMM / transformer, N_p learned tokens are prepended to the input
(eqs. 26, 29) and always visible to attention; for MAC each layer prepends its own N_p tokens to every
segment's attention (eq. 22).

Deviations and open choices (also in docs/fidelity/titans.md):
- MAC's attention is causal over the retrieved tokens too: x_t sees h_j only for j <= t (the paper's
  figure shows h as a fully visible prefix, which would let x_t see h_j = M*(q_j) of later tokens j).
  RoPE positions inside a segment: persistent 0..N_p-1, then h_j and x_j both at N_p + j.
- MAC requires ``window % memory.chunk_size == 0`` so that segment ends are chunk ends.

Streaming: :meth:`TitansLM.init_state` / :meth:`TitansLM.forward` with a state continue a sequence; feeding
one token at a time gives the same logits as the parallel forward (tested), under ``torch.inference_mode``
too, since the memory's inner update uses analytic gradients.

Shapes: b batch, n tokens, D model width, h attention heads, d head width, w window, p persistent tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from testtime.nn import RMSNorm, RotaryEmbedding, SwiGLU, apply_rope
from testtime.titans.config import TitansConfig
from testtime.titans.memory import MemoryState, NeuralMemory

__all__ = ["TitansLM", "TitansState"]


# ------------------------------------------------------------------------------------------ attention


@dataclass
class AttnCache:
    """Keys / values kept for attention: an always-visible prefix and the last ``window`` positions."""

    k: Tensor | None = None  # b h t d
    v: Tensor | None = None
    pos: Tensor | None = None  # t, absolute positions (-1 marks always-visible prefix keys)


class WindowAttention(nn.Module):
    """Causal sliding-window attention with an always-visible prefix (SWA* of eqs. 26 and 30).

    Args:
        dim: model width; num_heads: heads; window: keys a query sees (itself included), None = all.
        rope_base: rotary base.
    """

    def __init__(self, dim: int, num_heads: int, *, window: int | None, rope_base: float) -> None:
        super().__init__()
        self.num_heads, self.window = num_heads, window
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.rope = RotaryEmbedding(self.head_dim, theta=rope_base)

    def project(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v (b, h, n, d) with RoPE at ``positions`` (n,)."""
        q, k, v = rearrange(self.qkv(x), "b n (k h d) -> k b h n d", k=3, h=self.num_heads)
        cos, sin = self.rope(positions)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """Softmax attention with a boolean mask (n_q, n_k) -> (b, n_q, D)."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(rearrange(out, "b h n d -> b n (h d)"))

    def forward(
        self, x: Tensor, positions: Tensor, cache: AttnCache, num_prefix: int
    ) -> tuple[Tensor, AttnCache]:
        """Attend from x (b, n, D) at absolute ``positions`` over the cache and itself.

        Positions below ``num_prefix`` are the persistent prefix and stay visible to every later query.
        """
        q, k, v = self.project(x, positions)
        key_pos = positions
        if cache.k is not None:
            assert cache.v is not None and cache.pos is not None
            k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
            key_pos = torch.cat([cache.pos, key_pos])
        qp, kp = positions[:, None], key_pos[None, :]
        mask = kp <= qp
        if self.window is not None:
            mask = mask & ((kp < num_prefix) | (qp - kp < self.window))
        out = self.attend(q, k, v, mask)
        keep = key_pos < num_prefix
        keep = (
            keep | (key_pos > positions[-1] - self.window)
            if self.window is not None
            else torch.ones_like(keep)
        )
        return out, AttnCache(k=k[:, :, keep], v=v[:, :, keep], pos=key_pos[keep])


def _gate(a: Tensor, b: Tensor, norm_a: RMSNorm, norm_b: RMSNorm) -> Tensor:
    """The combination a (x) b of eqs. 25 and 28: RMSNorm(a) * sigmoid(RMSNorm(b))."""
    return norm_a(a) * torch.sigmoid(norm_b(b))


# --------------------------------------------------------------------------------------------- blocks


@dataclass
class BlockState:
    """Per-block streaming state."""

    memory: MemoryState | None = None
    attn: AttnCache = field(default_factory=AttnCache)
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
        self.norm_mix = RMSNorm(cfg.dim)
        self.norm_mlp = RMSNorm(cfg.dim)
        self.mlp = SwiGLU(cfg.dim, int(cfg.mlp_ratio * cfg.dim))
        self.memory = NeuralMemory(cfg.memory) if cfg.variant != "transformer" else None
        if cfg.variant in ("mag", "mal", "transformer"):
            self.attn = WindowAttention(
                cfg.dim, cfg.num_attn_heads, window=cfg.window, rope_base=cfg.rope_base
            )
        elif cfg.variant == "mac":
            self.attn = WindowAttention(cfg.dim, cfg.num_attn_heads, window=None, rope_base=cfg.rope_base)
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
        else:
            h = self.norm_mix(x)
            mem_state, cache = state.memory, state.attn
            if self.variant == "lmm":
                assert self.memory is not None
                m, mem_state = self.memory(h, mem_state)
                x = x + m
            elif self.variant == "transformer":
                a, cache = self.attn(h, positions, cache, num_prefix)
                x = x + a
            elif self.variant == "mal":
                assert self.memory is not None
                m, mem_state = self.memory(h, mem_state)
                x = x + m
                a, cache = self.attn(self.norm_attn(x), positions, cache, num_prefix)
                x = x + a
            else:  # mag
                assert self.memory is not None
                a, cache = self.attn(h, positions, cache, num_prefix)
                m, mem_state = self.memory(h, mem_state)
                x = x + _gate(a, m, self.gate_norm_a, self.gate_norm_b)
            state = BlockState(memory=mem_state, attn=cache)
        return x + self.mlp(self.norm_mlp(x)), state

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
                    memory=state.memory, attn=AttnCache(), segment_weights=state.memory.weights,
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
        q, kx, vx = self.attn.project(xn, local)
        _, kh, vh = self.attn.project(h, local)
        cache = state.attn
        if cache.k is None:  # segment start: the persistent tokens' keys (eq. 22)
            p = self.persistent[None].expand(x.shape[0], -1, -1)
            _, kp, vp = self.attn.project(p, torch.arange(num_p, device=x.device))
            prev_k, prev_v = kp, vp
            prev_pos = torch.full((num_p,), -1, device=x.device)
        else:
            assert cache.v is not None and cache.pos is not None
            prev_k, prev_v, prev_pos = cache.k, cache.v, cache.pos
        # keys: [persistent, earlier h and x of this segment, new h, new x]; pos -1 = persistent
        k = torch.cat([prev_k, kh, kx], dim=2)
        v = torch.cat([prev_v, vh, vx], dim=2)
        key_pos = torch.cat([prev_pos, local, local])
        qp, kp = local[:, None], key_pos[None, :]
        mask = (kp == -1) | (kp <= qp)
        y = self.attn.attend(q, k, v, mask)  # eq. 23
        m, mem_state = self.memory(y, state.memory)  # eq. 24 (store y), then read M*_t(y_t)
        o = _gate(y, m, self.gate_norm_a, self.gate_norm_b)  # eq. 25
        new = BlockState(
            memory=mem_state, attn=AttnCache(k=k, v=v, pos=key_pos), segment_weights=state.segment_weights,
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
            for name in ("k", "v", "pos"):
                t = getattr(blk.attn, name)
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
                    attn=AttnCache(k=mine.get("attn.k"), v=mine.get("attn.v"), pos=mine.get("attn.pos")),
                    segment_weights=[mine[k] for k in seg] or None,
                    read_conv=mine.get("read_conv"),
                )
            )
        return cls(blocks=blocks, position=int(tensors["position"]))


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

    def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> Any:
        """Parallel forward over whole sequences (b, n) (the trainer's plug-in API, docs/train.md).

        Returns:
            An ``LMOutput`` with ``logits`` (b, n, vocab) and, when ``labels`` (b, n; the next tokens, -100
            ignored) are given, ``loss``, the mean next-token cross-entropy.
        """
        from testtime.train.registry import LMOutput

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
            last = logits[:, -1]
            if temperature > 0:
                nxt = torch.multinomial(torch.softmax(last / temperature, dim=-1), 1)
            else:
                nxt = last.argmax(-1, keepdim=True)
            out.append(nxt)
            if index + 1 < max_new_tokens:
                logits, state = self.step(nxt, state)
        return torch.cat(out, dim=1), state
