"""Simulated FP8: E4M3 rounding, fine-grained scaling, promotion of partial sums, the linear layer's GEMMs."""

from __future__ import annotations

import torch

from testtime.deepseek import DeepSeekV3Config, DeepSeekV3ForCausalLM
from testtime.deepseek.fp8 import FP8Linear, fake_quant_e4m3, fp8_error_report, fp8_gemm, round_mantissa


def test_e4m3_grid_and_mantissa_rounding() -> None:
    one = torch.tensor(1.0)
    # E4M3 has 3 mantissa bits: between 1 and 2 the step is 1/8; 448 is the largest finite value
    x = torch.tensor([1.0, 1.06, 1.07, 1.125, 448.0, -0.3])
    got = fake_quant_e4m3(x, one)
    torch.testing.assert_close(got, torch.tensor([1.0, 1.0, 1.125, 1.125, 448.0, -0.3125]))
    assert torch.equal(
        round_mantissa(torch.tensor([1.0 + 2**-10, -3.0 - 2**-9]), 8), torch.tensor([1.0, -3.0])
    )


def test_gemm_equals_blockwise_definition() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 300, generator=g), torch.randn(130, 300, generator=g)
    got = fp8_gemm(a, b, b_blocks=True, accumulation_bits=None)
    want = torch.zeros(5, 130, dtype=torch.float64)
    for c in range(3):  # 128-wide chunks of the reduction, the last one partial
        cols = slice(128 * c, min(128 * (c + 1), 300))
        a_scale = a[:, cols].abs().amax(1, keepdim=True) / 448
        for rows in (slice(0, 128), slice(128, 130)):  # 128x128 weight blocks
            w = b[rows, cols]
            wq = fake_quant_e4m3(w, w.abs().max() / 448)
            want[:, rows] += fake_quant_e4m3(a[:, cols], a_scale).double() @ wq.double().t()
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


def test_error_against_bf16_and_promotion_benefit() -> None:
    report = fp8_error_report(m=64, k=4096, n=64)
    assert report["bf16"] < report["fp8_tile"] < 0.05
    assert report["fp8_tile"] < report["fp8_per_tensor"]
    assert report["accumulation_promoted"] * 5 < report["accumulation_no_promotion"]


def test_fp8_linear_gradients_close_to_float() -> None:
    torch.manual_seed(0)
    layer = FP8Linear(256, 192)
    ref = torch.nn.Linear(256, 192, bias=False)
    ref.weight.data.copy_(layer.weight.data)
    x = torch.randn(3, 10, 256, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = layer(x), ref(x_ref)
    assert 1e-4 < float((y - y_ref).detach().norm() / y_ref.detach().norm()) < 0.05
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    for a, b in ((x.grad, x_ref.grad), (layer.weight.grad, ref.weight.grad)):
        assert float((a - b).norm() / b.norm()) < 0.06


def test_fp8_model_loss_close_to_float() -> None:
    torch.manual_seed(0)
    model = DeepSeekV3ForCausalLM(DeepSeekV3Config.tiny(initializer_range=0.1))
    fp8 = DeepSeekV3ForCausalLM(DeepSeekV3Config.tiny(initializer_range=0.1, fp8=True))
    fp8.load_state_dict(model.state_dict())
    assert isinstance(fp8.model.layers[0].self_attn.q_a_proj, FP8Linear)
    ids = torch.randint(0, 256, (1, 12))
    loss, loss8 = model(ids, labels=ids).loss, fp8(ids, labels=ids).loss
    assert abs(float((loss8 - loss).detach())) / float(loss.detach()) < 0.01
    loss8.backward()
    assert fp8.model.layers[0].self_attn.q_a_proj.weight.grad.abs().sum() > 0
