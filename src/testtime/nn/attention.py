"""Causal scaled-dot-product attention with an optional sliding window and a prefix the window never hides.

The mask rule, for a query at absolute position ``p`` and the key at index ``j`` (keys are indexed by
absolute position, the first ``num_prefix`` of them being prefix tokens such as Titans' persistent memory):

    visible(p, j) = j <= p  and  (j < num_prefix  or  window is None  or  p - j < window)

so a window of ``w`` lets each query see itself and the ``w - 1`` keys before it, plus the whole prefix
before it (prefix tokens attend causally among themselves, like the rest of the sequence).
Queries are the last ``t_q`` positions of the ``t_k`` keys unless ``q_offset`` says otherwise, which is
what decoding with a :class:`KVCache` needs. Where key index and position part (a bounded cache that has
dropped keys no query can see any more, or several keys at one position as in Titans' MAC), explicit
``q_positions`` and ``key_positions`` take their place in the same rule.

This is the package's one windowed attention with a persistent prefix: the Transformer++ baseline, Titans'
SWA / MAG / MAL / MAC attention and the tests all use it.

The computation is ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels
where the backend has them); plain causal attention uses its ``is_causal`` fast path, anything else a
boolean mask built by :func:`attention_mask`. Grouped-query attention (fewer key/value heads) is supported.

Shape legend: ``b`` batch, ``h`` query heads, ``g`` key/value heads (divides ``h``), ``t_q`` queries,
``t_k`` keys, ``d`` head dimension, ``e`` value head dimension, ``D`` model width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from testtime.nn.rope import apply_rope

__all__ = ["CausalSelfAttention", "KVCache", "attention_mask", "causal_attention"]


def attention_mask(
    num_queries: int,
    num_keys: int,
    *,
    q_offset: int | None = None,
    window: int | None = None,
    num_prefix: int = 0,
    device: torch.device | str | None = None,
    q_positions: torch.Tensor | None = None,
    key_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """The boolean visibility mask of the rule in the module docstring (True = may attend).

    Args:
        num_queries: ``t_q``.
        num_keys: ``t_k``.
        q_offset: absolute position of the first query (default ``t_k - t_q``: queries are the last keys).
        window: sliding-window size (each query sees at most this many non-prefix keys), or None.
        num_prefix: keys at positions below ``num_prefix`` are never hidden by the window.
        device: where to build the mask.
        q_positions: ``(t_q,)`` positions of the queries (overrides ``q_offset``).
        key_positions: ``(t_k,)`` positions of the keys (default ``0 .. t_k - 1``).

    Returns:
        ``(t_q, t_k)`` bool.
    """
    if q_offset is None:
        q_offset = num_keys - num_queries
    if window is not None and window < 1:
        raise ValueError(f"attention window must be >= 1, got {window}")
    if num_prefix < 0 or (key_positions is None and num_prefix > num_keys):
        raise ValueError(f"num_prefix must be in [0, {num_keys}], got {num_prefix}")
    if q_positions is None:
        q_positions = torch.arange(q_offset, q_offset + num_queries, device=device)
    if key_positions is None:
        key_positions = torch.arange(num_keys, device=device)
    q_pos, k_pos = q_positions.to(device)[:, None], key_positions.to(device)[None, :]
    visible = k_pos <= q_pos
    if window is not None:
        visible = visible & ((q_pos - k_pos < window) | (k_pos < num_prefix))
    return visible


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int | None = None,
    num_prefix: int = 0,
    q_offset: int | None = None,
    scale: float | None = None,
    q_positions: torch.Tensor | None = None,
    key_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention of the queries over the keys they may see (rule in the module docstring).

    Args:
        q: ``(b, h, t_q, d)``.
        k: ``(b, g, t_k, d)`` with ``h % g == 0``.
        v: ``(b, g, t_k, e)``.
        window: sliding-window size, or None for full causal attention.
        num_prefix: number of leading keys the window never hides.
        q_offset: absolute position of the first query (default ``t_k - t_q``).
        scale: softmax scale (default ``d ** -0.5``).
        q_positions: ``(t_q,)`` query positions, when key index and position part (see the module docstring).
        key_positions: ``(t_k,)`` key positions.

    Returns:
        ``(b, h, t_q, e)``.
    """
    num_queries, num_keys = q.shape[-2], k.shape[-2]
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} key/value heads")
    offset = num_keys - num_queries if q_offset is None else q_offset
    gqa = q.shape[1] != k.shape[1]
    if q_positions is not None or key_positions is not None:
        mask = attention_mask(
            num_queries, num_keys, q_offset=offset, window=window, num_prefix=num_prefix, device=q.device,
            q_positions=q_positions, key_positions=key_positions,
        )  # fmt: skip
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    if window is None and num_prefix == 0 and offset == 0 and num_queries == num_keys:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    if window is None and num_prefix == 0 and offset + num_queries - 1 >= num_keys - 1 and num_queries == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=gqa)  # one query sees all
    mask = attention_mask(
        num_queries, num_keys, q_offset=offset, window=window, num_prefix=num_prefix, device=q.device
    )
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


class KVCache:
    """Keys and values of the positions seen so far by one attention layer, for token-by-token decoding.

    By default the cache keeps every position (a sliding window is applied by the mask, not by eviction),
    so key index equals absolute position and :attr:`length` is the position of the next query. A
    ``bounded`` cache instead drops, at each update with a window, the keys that no query at or after the
    new positions can see (all but the prefix and the last ``window - 1`` positions before them): memory
    stays constant over a stream, and :attr:`positions` tells which position each kept key has.

    Args:
        bounded: drop keys that have left every later query's window.
    """

    def __init__(self, *, bounded: bool = False) -> None:
        self.bounded = bounded
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None  # (t_k,) position of every kept key
        self.length = 0  # positions seen (the position of the next query when positions are consecutive)

    def copy(self) -> KVCache:
        """A shallow copy (tensors shared): updating it leaves this cache as it is."""
        other = KVCache(bounded=self.bounded)
        other.k, other.v, other.positions, other.length = self.k, self.v, self.positions, self.length
        return other

    def update(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        window: int | None = None,
        num_prefix: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new keys ``(b, g, t, d)`` and values ``(b, g, t, e)``; return all of them kept so far.

        Args:
            k: new keys.
            v: new values.
            positions: ``(t,)`` their positions (default: the next ``t`` after :attr:`length`).
            window: with a bounded cache, drop the old keys at positions ``<= positions[0] - window``
                (those below ``num_prefix`` stay).
            num_prefix: positions below it are always kept.
        """
        if positions is None:
            positions = torch.arange(self.length, self.length + k.shape[-2], device=k.device)
        if self.k is None or self.v is None or self.positions is None:
            self.k, self.v, self.positions = k, v, positions
        else:
            if self.bounded and window is not None:
                keep = (self.positions < num_prefix) | (self.positions > positions.min() - window)
                if not bool(keep.all()):
                    self.k, self.v, self.positions = (
                        self.k[:, :, keep],
                        self.v[:, :, keep],
                        self.positions[keep],
                    )
            self.k = torch.cat((self.k, k), dim=-2)
            self.v = torch.cat((self.v, v), dim=-2)
            self.positions = torch.cat((self.positions, positions))
        self.length = max(self.length, int(positions.max()) + 1)
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    """Multi-head (optionally grouped-query) causal self-attention with RoPE, as in Llama.

    Args:
        dim: model width ``D``.
        num_heads: query heads ``h``.
        num_kv_heads: key/value heads ``g`` (default ``h``: plain multi-head attention).
        head_dim: per-head width (default ``D // h``).
        window: sliding-window size, or None for full causal attention.
        rope_interleaved: rotate pairs ``(2i, 2i+1)`` instead of ``(i, i + d/2)``.
        bias: biases on the projections.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        window: int | None = None,
        rope_interleaved: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
            head_dim = dim // num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} heads are not a multiple of {num_kv_heads} key/value heads")
        if window is not None and window < 1:
            raise ValueError(f"attention window must be >= 1, got {window}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.window, self.rope_interleaved = window, rope_interleaved
        self.q_proj = nn.Linear(dim, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, num_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * head_dim, dim, bias=bias)

    def project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries ``(b, h, t, d)``, keys and values ``(b, g, t, d)`` of ``x (b, t, D)``, rotated by cos/sin."""
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", d=self.head_dim)
        k = rearrange(self.k_proj(x), "b t (g d) -> b g t d", d=self.head_dim)
        v = rearrange(self.v_proj(x), "b t (g d) -> b g t d", d=self.head_dim)
        q = apply_rope(q, cos, sin, interleaved=self.rope_interleaved)
        k = apply_rope(k, cos, sin, interleaved=self.rope_interleaved)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **mask: object) -> torch.Tensor:
        """:func:`causal_attention` with this layer's window (``mask``: its other keywords), then ``o_proj``.

        Returns:
            ``(b, t_q, D)``.
        """
        out = causal_attention(q, k, v, window=self.window, **mask)  # type: ignore[arg-type]
        return self.o_proj(rearrange(out, "b h t d -> b t (h d)"))

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
        """Attend over the sequence (and the cache, if given).

        Args:
            x: ``(b, t, D)``, the new positions.
            cos: ``(t, d/2)`` rotary cosines for the new positions (from :class:`testtime.nn.RotaryEmbedding`).
            sin: ``(t, d/2)``.
            cache: past keys/values; updated in place with the new ones.
            num_prefix: leading positions (of the whole sequence) the window never hides.
            positions: ``(t,)`` positions of ``x`` (default: ``0 .. t-1``, or continuing the cache).

        Returns:
            ``(b, t, D)``.
        """
        q, k, v = self.project(x, cos, sin)
        if cache is None:
            if positions is None:
                return self.attend(q, k, v, num_prefix=num_prefix)
            return self.attend(q, k, v, num_prefix=num_prefix, q_positions=positions, key_positions=positions)
        if positions is None and not cache.bounded:
            q_offset = cache.length
            k, v = cache.update(k, v)
            return self.attend(q, k, v, num_prefix=num_prefix, q_offset=q_offset)
        if positions is None:
            positions = torch.arange(cache.length, cache.length + x.shape[1], device=x.device)
        k, v = cache.update(k, v, positions=positions, window=self.window, num_prefix=num_prefix)
        return self.attend(
            q, k, v, num_prefix=num_prefix, q_positions=positions, key_positions=cache.positions
        )
