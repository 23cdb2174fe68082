"""The Transformer++ block against its formula written out by hand in float64, full and windowed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from testtime.nn import KVCache, RotaryEmbedding, TransformerBlock, rope_cos_sin


def _rms(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * gain


def _rotate(x: torch.Tensor, position: int, freq: torch.Tensor) -> torch.Tensor:
    """Half-split RoPE of one head vector as complex multiplication (d/2 pairs (i, i + d/2))."""
    half = x.shape[-1] // 2
    z = torch.complex(x[:half], x[half:]) * torch.polar(
        torch.ones(half, dtype=torch.float64), position * freq
    )
    return torch.cat((z.real, z.imag))


def _by_hand(block: TransformerBlock, x: torch.Tensor, *, window, num_prefix, freq) -> torch.Tensor:
    """x + W_o attention(norm(x)) with an explicit loop over positions and heads; then + SwiGLU(norm(.))."""
    attn, eps = block.attn, block.attn_norm.eps
    b, t, _ = x.shape
    h, g, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
    out = torch.zeros_like(x)
    for bi in range(b):
        n = _rms(x[bi], block.attn_norm.weight, eps)
        q = (n @ attn.q_proj.weight.T).view(t, h, d)
        k = (n @ attn.k_proj.weight.T).view(t, g, d)
        v = (n @ attn.v_proj.weight.T).view(t, g, d)
        heads = torch.zeros(t, h, d, dtype=x.dtype)
        for p in range(t):
            seen = [j for j in range(p + 1) if j < num_prefix or window is None or p - j < window]
            for hi in range(h):
                gi = hi // (h // g)
                qr = _rotate(q[p, hi], p, freq)
                scores = torch.stack([qr @ _rotate(k[j, gi], j, freq) for j in seen]) / math.sqrt(d)
                weights = torch.softmax(scores, dim=0)
                heads[p, hi] = sum(w * v[j, gi] for w, j in zip(weights, seen, strict=True))
        out[bi] = x[bi] + heads.reshape(t, h * d) @ attn.o_proj.weight.T
    mlp = block.mlp
    m = _rms(out, block.mlp_norm.weight, block.mlp_norm.eps)
    hidden = F.silu(m @ mlp.gate_proj.weight.T) * (m @ mlp.up_proj.weight.T)
    return out + hidden @ mlp.down_proj.weight.T


@pytest.mark.parametrize(
    ("kv_heads", "window", "num_prefix"),
    [(None, None, 0), (1, None, 0), (None, 3, 0), (1, 3, 2)],
)
def test_block_matches_its_formula(kv_heads, window, num_prefix) -> None:
    torch.manual_seed(0)
    block = TransformerBlock(16, 2, num_kv_heads=kv_heads, mlp_hidden_dim=24, window=window).double()
    with torch.no_grad():  # non-trivial gains, so that a swapped or missing norm shows
        block.attn_norm.weight.uniform_(0.5, 1.5)
        block.mlp_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    # the package's frequencies, angles in float64 (the module's float32 tables would cost 1e-7)
    freq = RotaryEmbedding(8, theta=500.0).inv_freq.double()
    cos, sin = rope_cos_sin(torch.arange(9), freq)
    torch.testing.assert_close(freq, 500.0 ** (-torch.arange(4, dtype=torch.float64) / 4), rtol=1e-6, atol=0)
    want = _by_hand(block, x, window=window, num_prefix=num_prefix, freq=freq)
    torch.testing.assert_close(block(x, cos, sin, num_prefix=num_prefix), want, rtol=1e-10, atol=1e-10)
    # decoding token by token gives the same outputs (a windowed cache evicts what no query sees again)
    cache, rows = KVCache(bounded=window is not None), []
    for p in range(9):
        rows.append(
            block(x[:, p : p + 1], cos[p : p + 1], sin[p : p + 1], cache=cache, num_prefix=num_prefix)
        )
    torch.testing.assert_close(torch.cat(rows, dim=1), want, rtol=1e-10, atol=1e-10)
