"""Causal attention (window, prefix, GQA, offsets) against an explicit float64 loop; KV-cache decoding."""

from __future__ import annotations

import pytest
import torch

from testtime.nn import CausalSelfAttention, KVCache, RotaryEmbedding, attention_mask, causal_attention


def _visible(p: int, j: int, window: int | None, num_prefix: int) -> bool:
    return j <= p and (j < num_prefix or window is None or p - j < window)


def _naive_attention(q, k, v, *, window, num_prefix, q_offset):
    """Loop over batch, heads and queries; softmax over the visible keys only."""
    b, h, t_q, d = q.shape
    g = k.shape[1]
    out = torch.zeros(b, h, t_q, v.shape[-1], dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            gi = hi // (h // g)  # query head hi reads key/value head gi
            for i in range(t_q):
                p = q_offset + i
                keys = [j for j in range(k.shape[2]) if _visible(p, j, window, num_prefix)]
                scores = torch.stack([q[bi, hi, i] @ k[bi, gi, j] for j in keys]) / d**0.5
                weights = torch.softmax(scores, dim=0)
                out[bi, hi, i] = sum(w * v[bi, gi, j] for w, j in zip(weights, keys, strict=True))
    return out


def test_attention_mask_follows_the_rule() -> None:
    for t_q, t_k, offset, window, prefix in [
        (5, 5, None, None, 0),
        (3, 8, None, 2, 2),
        (4, 9, 2, 3, 1),
        (1, 6, None, 4, 3),
    ]:
        mask = attention_mask(t_q, t_k, q_offset=offset, window=window, num_prefix=prefix)
        start = t_k - t_q if offset is None else offset
        expected = torch.tensor(
            [[_visible(start + i, j, window, prefix) for j in range(t_k)] for i in range(t_q)]
        )
        assert torch.equal(mask, expected)
    assert attention_mask(4, 4, window=2).sum(-1).tolist() == [1, 2, 2, 2]


@pytest.mark.parametrize(
    ("heads", "kv_heads", "t_q", "t_k", "window", "prefix", "offset"),
    [
        (2, 2, 6, 6, None, 0, None),  # plain causal (is_causal fast path)
        (4, 2, 6, 6, None, 0, None),  # grouped-query
        (2, 2, 7, 7, 3, 0, None),  # sliding window
        (2, 1, 7, 7, None, 2, None),  # persistent-memory prefix
        (2, 2, 8, 8, 2, 3, None),  # window + prefix
        (2, 2, 1, 6, None, 0, None),  # one decoding query (no-mask fast path)
        (2, 2, 3, 9, 4, 1, None),  # chunked decoding with a cache
        (2, 2, 2, 6, None, 0, 1),  # explicit offset: queries in the middle
    ],
)
def test_causal_attention_matches_naive_loop(heads, kv_heads, t_q, t_k, window, prefix, offset) -> None:
    torch.manual_seed(0)
    q = torch.randn(2, heads, t_q, 8, dtype=torch.float64)
    k = torch.randn(2, kv_heads, t_k, 8, dtype=torch.float64)
    v = torch.randn(2, kv_heads, t_k, 5, dtype=torch.float64)
    out = causal_attention(q, k, v, window=window, num_prefix=prefix, q_offset=offset)
    start = t_k - t_q if offset is None else offset
    expected = _naive_attention(q, k, v, window=window, num_prefix=prefix, q_offset=start)
    torch.testing.assert_close(out, expected)


def test_future_tokens_do_not_change_the_past() -> None:
    torch.manual_seed(1)
    attn = CausalSelfAttention(16, 4, num_kv_heads=2, window=3).double()
    rope = RotaryEmbedding(4).double()
    x = torch.randn(1, 10, 16, dtype=torch.float64)
    cos, sin = rope(torch.arange(10))
    y1 = attn(x, cos, sin, num_prefix=2)
    x2 = x.clone()
    x2[:, 6:] += 1.0
    y2 = attn(x2, cos, sin, num_prefix=2)
    torch.testing.assert_close(y1[:, :6], y2[:, :6])
    assert not torch.allclose(y1[:, 6:], y2[:, 6:])


@pytest.mark.parametrize(("window", "prefix", "interleaved"), [(None, 0, False), (3, 0, True), (4, 2, False)])
def test_kv_cache_decoding_matches_full_forward(window, prefix, interleaved) -> None:
    torch.manual_seed(2)
    attn = CausalSelfAttention(16, 4, num_kv_heads=2, window=window, rope_interleaved=interleaved).double()
    rope = RotaryEmbedding(4).double()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    cos, sin = rope(torch.arange(9))
    full = attn(x, cos, sin, num_prefix=prefix)
    cache = KVCache()
    # prefill the first 4 positions at once, then one token at a time
    pieces = [attn(x[:, :4], cos[:4], sin[:4], cache=cache, num_prefix=prefix)]
    for t in range(4, 9):
        pieces.append(attn(x[:, t : t + 1], cos[t : t + 1], sin[t : t + 1], cache=cache, num_prefix=prefix))
    assert cache.length == 9
    torch.testing.assert_close(torch.cat(pieces, dim=1), full)


def test_bad_attention_arguments_raise() -> None:
    with pytest.raises(ValueError):
        CausalSelfAttention(16, 3)
    with pytest.raises(ValueError):
        CausalSelfAttention(16, 4, num_kv_heads=3)
    with pytest.raises(ValueError):
        attention_mask(2, 2, window=0)


def test_bounded_cache_decoding_equals_the_full_forward_and_stays_small() -> None:
    torch.manual_seed(2)
    attn = CausalSelfAttention(16, 2, window=3).double()
    rope = RotaryEmbedding(8).double()
    x = torch.randn(1, 12, 16, dtype=torch.float64)
    full = attn(x, *rope(torch.arange(12)), num_prefix=2)
    cache = KVCache(bounded=True)
    steps = []
    for start, end in [(0, 4), (4, 5), (5, 9), (9, 10), (10, 12)]:
        positions = torch.arange(start, end)
        steps.append(attn(x[:, start:end], *rope(positions), cache=cache, num_prefix=2))
        assert cache.positions is not None and cache.length == end
        assert cache.k is not None and cache.k.shape[-2] <= 2 + 3 - 1 + (end - start)  # prefix + window
    torch.testing.assert_close(torch.cat(steps, dim=1), full)
    assert cache.positions.tolist()[:2] == [0, 1]  # the prefix is never dropped
