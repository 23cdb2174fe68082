"""The fast RoPE form against the plain one (and against transformers' Llama rotation in bfloat16)."""

from __future__ import annotations

import pytest
import torch

from testtime.nn.fused import apply_rope_native, full_rope_tables
from testtime.nn.rope import apply_rope, rope_cos_sin, rope_inv_freq


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_rope_equals_the_plain_form(dtype) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 16, dtype=dtype)
    inv_freq, _ = rope_inv_freq(16, theta=10000.0)
    cos, sin = rope_cos_sin(torch.arange(7), inv_freq.to(dtype))
    full_cos, full_sin = full_rope_tables(cos, sin, dtype)
    assert torch.equal(apply_rope_native(x, full_cos, full_sin), apply_rope(x, cos, sin))


def test_native_rope_in_bfloat16_rounds_like_transformers() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(1)
    q = torch.randn(1, 4, 5, 8).to(torch.bfloat16)
    k = torch.randn(1, 2, 5, 8).to(torch.bfloat16)
    inv_freq, _ = rope_inv_freq(8)
    cos, sin = rope_cos_sin(torch.arange(5), inv_freq)
    full_cos, full_sin = full_rope_tables(cos, sin, torch.bfloat16)
    want_q, want_k = apply_rotary_pos_emb(q, k, full_cos[None], full_sin[None])
    assert torch.equal(apply_rope_native(q, full_cos, full_sin), want_q)
    assert torch.equal(apply_rope_native(k, full_cos, full_sin), want_k)
    # The plain form (float32 inside) differs from it by bfloat16 rounding only.
    plain = apply_rope(q, cos, sin)
    assert torch.allclose(plain.float(), want_q.float(), atol=0.05)
