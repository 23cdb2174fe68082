"""RMSNorm and SwiGLU against direct formulas."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from testtime.nn import RMSNorm, SwiGLU, rms, rms_norm, swiglu_hidden_dim


def test_rms_norm_matches_formula_in_float64() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16, dtype=torch.float64) * 3 + 1
    norm = RMSNorm(16, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    expected = torch.empty_like(x)
    for i in range(3):
        for j in range(5):
            row = x[i, j]
            expected[i, j] = row / torch.sqrt((row**2).sum() / 16 + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)
    # unit RMS after normalisation without gain
    out = rms_norm(x, None, eps=0.0)
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(3, 5, dtype=torch.float64))


def test_rms_norm_computes_low_precision_in_float32() -> None:
    torch.manual_seed(1)
    x = (torch.randn(4, 64) * 50).to(torch.bfloat16)
    weight = torch.rand(64).to(torch.bfloat16)
    out = rms_norm(x, weight)
    assert out.dtype == torch.bfloat16
    x32 = x.float()
    expected = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6) * weight.float()).bfloat16()
    assert torch.equal(out, expected)


def test_swiglu_matches_formula() -> None:
    torch.manual_seed(2)
    block = SwiGLU(8, 24).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    gate = x @ block.gate_proj.weight.T
    up = x @ block.up_proj.weight.T
    expected = (gate * torch.sigmoid(gate) * up) @ block.down_proj.weight.T
    torch.testing.assert_close(block(x), expected)
    assert torch.allclose(F.silu(gate), gate / (1 + torch.exp(-gate)))


def test_swiglu_hidden_dim_rounds_up() -> None:
    assert swiglu_hidden_dim(768) == 2048  # 8/3 * 768 = 2048 exactly
    assert swiglu_hidden_dim(100, multiple_of=32) == 288  # 266 -> 288
    assert swiglu_hidden_dim(64, multiple_of=1) == 170


def test_rms_norm_cast_order_and_scale() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    w = torch.randn(16, dtype=torch.bfloat16)
    ref = x.float() * (x.float().pow(2).mean(-1, keepdim=True) + 1e-6).rsqrt()
    assert torch.equal(rms_norm(x, w, eps=1e-6, cast_before_gain=True), w * ref.to(torch.bfloat16))
    assert torch.equal(rms_norm(x, w, eps=1e-6), (ref * w.float()).to(torch.bfloat16))
    y = torch.randn(4, 8, dtype=torch.float64)
    torch.testing.assert_close(rms(y, eps=0.0), y.pow(2).mean(-1, keepdim=True).sqrt())
