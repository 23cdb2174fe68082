"""Multi-head Latent Attention (DeepSeek-V3 Section 2.1.1, eqs. 1-11) with its latent KV cache.

Keys and values are compressed jointly into a latent ``c_kv = RMSNorm(W^DKV h)`` of width d_c (eq. 1); queries
into ``c_q = RMSNorm(W^DQ h)`` of width d'_c (eq. 6). Position enters only through the decoupled rope parts: a
per-head rope query ``q^R = RoPE(W^QR c_q)`` (eq. 8) and ONE rope key ``k^R = RoPE(W^KR h)`` shared by all heads
(eq. 3). The cache holds only ``[c_kv ; k^R]``: d_c + d_h^R values per token per layer.

Two ways to attend, side by side and equal in exact arithmetic (tested):

* expanded (training, prefill): up-project the latents into per-head keys ``k^C = W^UK c_kv`` and values
  ``v = W^UV c_kv`` (eqs. 2, 5) and run ordinary attention (SDPA);
* absorbed (decode): fold W^UK into the query (``q^C^T W^UK c_kv = (W^UK^T q^C)^T c_kv``), attend over the
  cached latents directly, and apply W^UV after the weighted sum. Per token and head this costs
  O(d_c + d_h^R) instead of re-expanding every cached latent to (d_h + d_v) values per head.

Shape legend: ``b`` batch, ``s`` new positions (queries), ``t`` all positions (keys), ``h`` heads,
``d`` non-rope query/key head dim d_h, ``r`` rope dim d_h^R, ``v`` value head dim, ``c`` kv latent d_c,
``e`` = c + r (a cache row), ``D`` model width.

Deviations: the two latent RMSNorms use eps 1e-6 whatever ``rms_norm_eps`` says, as transformers and the
reference code do.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from testtime.deepseek.config import DeepSeekV3Config
from testtime.deepseek.layers import make_linear, norm
from testtime.nn import apply_rope

__all__ = ["MLA", "AttentionMode", "MLACache", "absorbed_attention", "expanded_attention"]

AttentionMode = Literal["expanded", "absorbed"]


class MLACache:
    """The latent KV cache of MLA: per layer one growing buffer ``(b, capacity, c + r)``.

    Row ``j`` of layer ``l`` holds ``[c_kv ; k^R]`` of position ``j``. Layers write their new rows at
    ``length`` and :meth:`advance` moves ``length`` once the whole stack has run; :meth:`crop` forgets
    positions (speculative decoding rolls rejected drafts back with it).

    Args:
        num_layers: attention layers sharing this cache.
        batch_size: b.
        width: c + r.
        dtype: storage dtype.
        device: storage device.
        capacity: initial positions per buffer (doubled when full).
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        width: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        capacity: int = 256,
    ) -> None:
        self.width = width
        self.length = 0
        self.buffers = [
            torch.zeros(batch_size, capacity, width, dtype=dtype, device=device) for _ in range(num_layers)
        ]

    def write(self, layer: int, rows: torch.Tensor) -> torch.Tensor:
        """Store the new rows of ``layer`` after the current ``length``.

        Args:
            layer: layer index within this cache.
            rows: ``(b, s, e)``.

        Returns:
            ``(b, length + s, e)``: every cached row of the layer, a view of the buffer.
        """
        buf = self.buffers[layer]
        end = self.length + rows.shape[1]
        if end > buf.shape[1]:
            grown = buf.new_zeros(buf.shape[0], max(end, 2 * buf.shape[1]), buf.shape[2])
            grown[:, : self.length] = buf[:, : self.length]
            self.buffers[layer] = buf = grown
        buf[:, self.length : end] = rows.detach()
        return buf[:, :end]

    def advance(self, num_positions: int) -> None:
        """Commit ``num_positions`` rows written by every layer."""
        self.length += num_positions

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {length}")
        self.length = length

    def bytes_per_token(self) -> int:
        """Bytes one position occupies over all layers: (c + r) * layers * element size."""
        return sum(buf.shape[2] * buf.element_size() for buf in self.buffers)


def expanded_attention(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    kv: torch.Tensor,
    k_rope: torch.Tensor,
    *,
    scale: float,
    offset: int,
) -> torch.Tensor:
    """MLA with the latents up-projected into per-head keys and values (eqs. 2-5, 10).

    Args:
        q_nope: ``(b, s, h, d)`` compressed-path queries q^C.
        q_rope: ``(b, s, h, r)`` rotated rope queries q^R.
        kv: ``(b, t, h, d + v)`` the up-projected latents [W^UK c_kv ; W^UV c_kv] of every position so far.
        k_rope: ``(b, t, r)`` the shared rotated rope key of every position.
        scale: softmax scale.
        offset: absolute position of the first query (t - s when queries are the last positions).

    Returns:
        ``(b, s, h, v)`` attention output per head.
    """
    d = q_nope.shape[-1]
    kv = rearrange(kv, "b t h f -> b h t f")
    k_nope, value = kv[..., :d], kv[..., d:]
    k_rope = k_rope.unsqueeze(1).expand(-1, k_nope.shape[1], -1, -1)
    key = torch.cat((k_nope, k_rope), dim=-1)
    query = rearrange(torch.cat((q_nope, q_rope), dim=-1), "b s h f -> b h s f")
    s, t = query.shape[2], key.shape[2]
    v_dim, qk_dim = value.shape[-1], query.shape[-1]
    # SDPA's fused (flash) kernels need one head width for q, k and v; zero columns change neither the
    # scores (scale is explicit) nor the outputs we keep, and avoid the math path's (s, t) score matrix.
    width = max(v_dim, qk_dim)
    query, key = F.pad(query, (0, width - qk_dim)), F.pad(key, (0, width - qk_dim))
    value = F.pad(value, (0, width - v_dim))
    if offset == 0 and s == t:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale)
    else:
        mask = torch.arange(t, device=query.device)[None, :] <= (
            torch.arange(s, device=query.device)[:, None] + offset
        )
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
    return rearrange(out[..., :v_dim], "b h s v -> b s h v")


def absorbed_attention(
    q_nope: torch.Tensor,
    q_rope: torch.Tensor,
    cache_rows: torch.Tensor,
    wkv_b: torch.Tensor,
    *,
    scale: float,
    offset: int,
) -> torch.Tensor:
    """MLA straight from the latent cache, W^UK absorbed into the query and W^UV applied after the sum.

    ``score(i, j) = q^C_i . (W^UK c_j) + q^R_i . k^R_j = [W^UK^T q^C_i ; q^R_i] . [c_j ; k^R_j]``, one matmul
    against the cache rows; ``o_i = W^UV sum_j p_ij c_j``.

    Args:
        q_nope: ``(b, s, h, d)``.
        q_rope: ``(b, s, h, r)``.
        cache_rows: ``(b, t, e)`` with e = c + r: ``[c_kv ; k^R]`` of every position so far.
        wkv_b: ``(h, d + v, c)``.
        scale: softmax scale.
        offset: absolute position of the first query.

    Returns:
        ``(b, s, h, v)``.
    """
    d = q_nope.shape[-1]
    c = wkv_b.shape[-1]
    q_latent = torch.einsum("bshd,hdc->bshc", q_nope, wkv_b[:, :d])
    query = torch.cat((q_latent, q_rope), dim=-1)  # (b, s, h, e)
    scores = torch.einsum("bshe,bte->bsht", query, cache_rows) * scale
    s, t = scores.shape[1], scores.shape[3]
    if s > 1:
        hidden = torch.arange(t, device=scores.device)[None, :] > (
            torch.arange(s, device=scores.device)[:, None] + offset
        )
        scores = scores.masked_fill(hidden[None, :, None, :], float("-inf"))
    probs = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(query.dtype)
    out_latent = torch.einsum("bsht,btc->bshc", probs, cache_rows[..., :c])
    return torch.einsum("bshc,hvc->bshv", out_latent, wkv_b[:, d:])


class MLA(nn.Module):
    """Multi-head Latent Attention; parameter names are those of the release and of transformers.

    Args:
        config: the model config (widths, ranks, rope, attention bias, FP8).
    """

    def __init__(self, config: DeepSeekV3Config) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.nope_dim = config.qk_nope_head_dim
        self.rope_dim = config.qk_rope_head_dim
        self.v_dim = config.v_head_dim
        self.kv_rank = config.kv_lora_rank
        self.q_rank = config.q_lora_rank
        self.rope_interleave = config.rope_interleave
        self.scale = config.softmax_scale
        dim, fp8, bias = config.hidden_size, config.fp8, config.attention_bias
        q_width = self.num_heads * config.qk_head_dim
        if self.q_rank is None:
            self.q_proj = make_linear(dim, q_width, fp8=fp8)
        else:
            self.q_a_proj = make_linear(dim, self.q_rank, bias=bias, fp8=fp8)  # W^DQ (eq. 6)
            self.q_a_layernorm = norm(self.q_rank)
            self.q_b_proj = make_linear(self.q_rank, q_width, fp8=fp8)  # [W^UQ ; W^QR] (eqs. 7, 8)
        self.kv_a_proj_with_mqa = make_linear(
            dim, self.kv_rank + self.rope_dim, bias=bias, fp8=fp8
        )  # [W^DKV ; W^KR]
        self.kv_a_layernorm = norm(self.kv_rank)
        self.kv_b_proj = make_linear(self.kv_rank, self.num_heads * (self.nope_dim + self.v_dim), fp8=fp8)
        self.o_proj = make_linear(self.num_heads * self.v_dim, dim, bias=bias, fp8=fp8)  # W^O (eq. 11)

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries and the new cache rows of ``x``.

        Args:
            x: ``(b, s, D)``.
            cos: ``(b, s, r/2)`` or ``(s, r/2)`` for the positions of ``x``.
            sin: like ``cos``.

        Returns:
            ``q_nope (b, s, h, d)``, ``q_rope (b, s, h, r)`` rotated, and ``rows (b, s, c + r)`` = [c_kv ; k^R].
        """
        if self.q_rank is None:
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q = rearrange(q, "b s (h f) -> b s h f", h=self.num_heads)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        q_rope = apply_rope(q_rope, cos.unsqueeze(-2), sin.unsqueeze(-2), interleaved=self.rope_interleave)
        latent, k_rope = self.kv_a_proj_with_mqa(x).split([self.kv_rank, self.rope_dim], dim=-1)
        k_rope = apply_rope(k_rope, cos, sin, interleaved=self.rope_interleave)
        rows = torch.cat((self.kv_a_layernorm(latent), k_rope), dim=-1)
        return q_nope, q_rope, rows

    def cheaper_mode(self, num_queries: int, num_keys: int) -> AttentionMode:
        """The path with fewer multiply-adds for ``s`` queries over ``t`` keys.

        Expanded: up-project t latents (t * c * h * (d + v)) plus attention (s * t * h * (d + r + v)).
        Absorbed: fold the queries (s * h * d * c), attention over cache rows (s * t * h * (2c + r)), unfold
        the outputs (s * h * c * v). Decoding steps and short verification chunks favour absorbed; a prefill
        favours expanded.
        """
        s, t, h = num_queries, num_keys, self.num_heads
        c, d, r, v = self.kv_rank, self.nope_dim, self.rope_dim, self.v_dim
        expanded = t * c * h * (d + v) + s * t * h * (d + r + v)
        absorbed = s * h * c * (d + v) + s * t * h * (2 * c + r)
        return "absorbed" if absorbed < expanded else "expanded"

    def up_weight(self) -> torch.Tensor:
        """``(h, d + v, c)``: the up-projections [W^UK ; W^UV] per head (a view of ``kv_b_proj.weight``)."""
        return self.kv_b_proj.weight.view(self.num_heads, self.nope_dim + self.v_dim, self.kv_rank)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *,
        cache: MLACache | None = None,
        layer: int = 0,
        mode: AttentionMode | None = None,
    ) -> torch.Tensor:
        """Attend causally over the cache (if any) and ``x``.

        Args:
            x: ``(b, s, D)`` normalised hidden states of the new positions.
            cos: rope cosines of the new positions.
            sin: rope sines.
            cache: the latent cache; its ``length`` is the position of ``x``'s first token.
            layer: this layer's index in ``cache``.
            mode: "expanded" or "absorbed"; None: expanded without a cache, else :meth:`cheaper_mode`.

        Returns:
            ``(b, s, D)``.
        """
        q_nope, q_rope, rows = self.project(x, cos, sin)
        offset = 0
        if cache is not None:
            offset = cache.length
            rows = cache.write(layer, rows)
        if mode is None:
            mode = self.cheaper_mode(x.shape[1], rows.shape[1]) if cache is not None else "expanded"
        if mode == "absorbed":
            out = absorbed_attention(q_nope, q_rope, rows, self.up_weight(), scale=self.scale, offset=offset)
        elif mode == "expanded":
            latents, k_rope = rows.split([self.kv_rank, self.rope_dim], dim=-1)
            kv = rearrange(self.kv_b_proj(latents), "b t (h f) -> b t h f", h=self.num_heads)
            out = expanded_attention(q_nope, q_rope, kv, k_rope, scale=self.scale, offset=offset)
        else:
            raise ValueError(f"mode must be 'expanded' or 'absorbed', not {mode!r}")
        return self.o_proj(rearrange(out, "b s h v -> b s (h v)"))
