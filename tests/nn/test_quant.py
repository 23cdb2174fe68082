"""Weight-only int4 / int8 products against a hand computation on the dequantized weights."""

from __future__ import annotations

import pytest
import torch

from testtime.nn.quant import GROUP, dequantize, quantize, quantize_with_dense, quantized_products_available

pytestmark = pytest.mark.skipif(
    not (quantized_products_available("int4") and quantized_products_available("int8")),
    reason="this torch build has no CPU int4 / int8 weight-only products",
)


def _reference(x: torch.Tensor, linear) -> torch.Tensor:
    """``x W^T + b`` in float64 on the weights the quantized product represents."""
    out = x.double() @ dequantize(linear).double().t()
    return out if linear.bias is None else out + linear.bias.double()


@pytest.mark.parametrize("kind", ["int4", "int8"])
@pytest.mark.parametrize("shape", [(48, 64), (100, 96), (16, 32)])  # 100: not a multiple of 16 (padded)
def test_products_equal_the_hand_computation(kind, shape) -> None:
    torch.manual_seed(0)
    weight = torch.randn(*shape) * 0.05
    bias = torch.randn(shape[0])
    linear = quantize(weight, bias, kind=kind)
    assert (linear.out_features, linear.in_features) == shape
    for x in (torch.randn(1, shape[1]), torch.randn(5, shape[1]), torch.randn(2, 3, shape[1])):
        x = x.to(torch.bfloat16)
        got = linear(x)
        assert got.shape == (*x.shape[:-1], shape[0]) and got.dtype == torch.bfloat16
        want = _reference(x, linear)
        # bfloat16 output: one rounding of values up to |want| (8 mantissa bits), plus the bias add.
        assert torch.allclose(got.double(), want, rtol=2**-7, atol=2**-6 * want.abs().max().item())


def test_non_contiguous_inputs_are_handled() -> None:
    torch.manual_seed(1)
    linear = quantize(torch.randn(32, 64), kind="int4")
    wide = torch.randn(4, 128).to(torch.bfloat16)
    x = wide[:, :64]
    assert not x.is_contiguous()
    assert torch.equal(linear(x), linear(x.contiguous()))


@pytest.mark.parametrize("kind", ["int4", "int8"])
def test_quantization_error_is_within_half_a_step(kind) -> None:
    torch.manual_seed(2)
    weight = torch.randn(64, 128) * 0.1
    back = dequantize(quantize(weight, kind=kind))
    if kind == "int4":
        groups = weight.reshape(64, -1, GROUP)
        step = ((groups.amax(-1) - groups.amin(-1)) / 15).repeat_interleave(GROUP, dim=1)
    else:
        step = (weight.abs().amax(1, keepdim=True) / 127).expand_as(weight)
    # Half a step from rounding the code, plus the bfloat16 rounding of the stored scale and offset.
    assert ((back - weight).abs() <= 0.5 * step + 0.02 * step + 2**-8 * weight.abs().amax()).all()
    assert (back - weight).abs().max() > 0  # it is a real quantization


def test_weights_on_a_4_bit_grid_come_back_exactly() -> None:
    """A Q4_1-style matrix (min + scale * q per group of 32) is re-quantized onto the same grid.

    Exactly so when the stored scale and offset (``min + 8 scale``) are bfloat16 numbers, as here.
    """
    torch.manual_seed(3)
    rows, groups = 48, 4
    scale = 2.0 ** -torch.randint(6, 10, (rows, groups, 1)).float()
    minimum = torch.randint(-100, 100, (rows, groups, 1)).float() / 64  # + 8 scale: < 256 / 64, 8 bits
    codes = torch.randint(0, 16, (rows, groups, GROUP))
    codes[..., 0], codes[..., 1] = 0, 15  # every group spans the whole range
    weight = (minimum + scale * codes).reshape(rows, groups * GROUP)
    assert torch.equal(dequantize(quantize(weight, kind="int4")), weight)


@pytest.mark.parametrize("kind", ["int4", "int8"])
def test_constant_and_zero_groups(kind) -> None:
    weight = torch.zeros(16, 64)
    weight[0, :32] = 0.37
    weight[1, 32:] = -1.5
    weight[2] = 3.0
    back = dequantize(quantize(weight, kind=kind))
    assert torch.equal(back[3:], weight[3:])  # zero rows stay zero
    assert torch.allclose(back, weight, rtol=2**-7, atol=0)


@pytest.mark.parametrize("kind", ["int4", "int8"])
def test_dense_copy_is_the_dequantized_weight(kind) -> None:
    torch.manual_seed(4)
    linear, dense = quantize_with_dense(torch.randn(40, 64), kind=kind)
    assert dense.dtype == torch.bfloat16 and dense.shape == (40, 64)
    assert torch.equal(dense, dequantize(linear).to(torch.bfloat16))


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="divisible by 32"):
        quantize(torch.randn(16, 48), kind="int4")
    quantize(torch.randn(16, 48), kind="int8")  # int8 has no group constraint
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        quantize(torch.randn(64), kind="int8")
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize(torch.full((16, 32), float("nan")))
    with pytest.raises(ValueError, match="kind must be"):
        quantize(torch.randn(16, 32), kind="int3")  # type: ignore[arg-type]
    linear = quantize(torch.randn(16, 32))
    with pytest.raises(TypeError, match="bfloat16 inputs"):
        linear(torch.randn(2, 32))
