"""FP8 training as DeepSeek-V3 does it (Section 3.3), simulated in float32 so that it runs and is testable on CPU.

* Format: E4M3 everywhere (max 448), with fine-grained scales instead of E5M2 for gradients.
* Scaling: activations (and output gradients) in 1x128 tiles along the reduction dimension, weights in 128x128
  blocks; each scale maps the tile's max |x| to 448 (online, no delayed scaling).
* Accumulation: the tensor cores of H800 keep about 14 bits of the partial sums; every N_C = 128 elements of
  the reduction the partial result is promoted to FP32 and multiplied by the two scales. Simulated by
  computing each 128-element chunk exactly (products of E4M3 numbers are exact in FP32), rounding the chunk's
  partial sum to ``accumulation_bits`` mantissa bits, and summing the promoted chunks in FP32.
* All three GEMMs of a linear layer use it: Fprop (x tiles . W blocks), Dgrad (dy tiles . W blocks) and
  Wgrad (dy^T and x^T in tiles along the token dimension, the paper's 128x1 tiles).

Quantisation is ``x.to(torch.float8_e4m3fn)`` on the scaled values (round to nearest even, saturating at 448),
then back to float32.

Shape legend: ``m`` rows (tokens), ``k`` reduction dim, ``n`` output features, ``c`` chunk index; a chunk is
``TILE`` = 128 values along ``k``.

Deviations: the limited-precision accumulation inside a chunk is modelled by one rounding of the chunk's
exact sum (the hardware truncates as it adds), so it underestimates that error slightly; master weights,
optimizer states, norms, the router, attention's score/value products and the embedding/head stay in
float32 here (the paper keeps the last three in BF16/FP32 too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["E4M3_MAX", "FP8Linear", "fake_quant_e4m3", "fp8_error_report", "fp8_gemm", "round_mantissa"]

E4M3_MAX = 448.0
TILE = 128
STEP = 32  # reduction elements one FP8 MMA instruction adds exactly (WGMMA k = 32)


def round_mantissa(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Truncate float32 values to ``bits`` explicit mantissa bits (round toward zero, as an adder that drops
    the low bits of the aligned addend does)."""
    mantissa, exponent = torch.frexp(x)  # x = mantissa * 2^exponent, |mantissa| in [0.5, 1)
    scale = float(2 ** (bits + 1))
    return torch.ldexp(torch.trunc(mantissa * scale) / scale, exponent)


def fake_quant_e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``dequant(quant(x / scale)) = e4m3(x / scale) * scale`` (scale broadcast to x)."""
    return (x / scale).to(torch.float8_e4m3fn).to(x.dtype) * scale


def _tile_scales(chunks: torch.Tensor) -> torch.Tensor:
    """Per-tile scale ``amax / 448`` for ``(rows, c, TILE)`` chunks -> ``(rows, c, 1)``."""
    return (chunks.abs().amax(-1, keepdim=True) / E4M3_MAX).clamp_min(1e-30)


def _block_scales(chunks: torch.Tensor) -> torch.Tensor:
    """Per 128x128-block scale for ``(rows, c, TILE)`` chunks (blocks of 128 rows) -> ``(rows, c, 1)``."""
    rows = chunks.shape[0]
    blocks = -(-rows // TILE)
    padded = F.pad(chunks.abs(), (0, 0, 0, 0, 0, blocks * TILE - rows))
    amax = padded.view(blocks, TILE, chunks.shape[1], TILE).amax(dim=(1, 3))  # (blocks, c)
    scale = (amax / E4M3_MAX).clamp_min(1e-30).repeat_interleave(TILE, 0)[:rows]
    return scale.unsqueeze(-1)


def fp8_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    b_blocks: bool,
    accumulation_bits: int | None = 13,
    promote_every: int = TILE,
) -> torch.Tensor:
    """``a @ b.T`` with both operands fake-quantised to E4M3 along the reduction dim and chunked accumulation.

    Args:
        a: ``(m, k)``, quantised in 1x128 tiles.
        b: ``(n, k)``, quantised in 128x128 blocks (``b_blocks``, weights) or 1x128 tiles.
        accumulation_bits: mantissa bits kept by the in-chunk accumulation (None: exact FP32).
        promote_every: reduction elements per promotion to FP32 (a multiple of 128; the paper's N_C = 128).

    Returns:
        ``(m, n)`` float32.
    """
    if promote_every % TILE:
        raise ValueError("promote_every must be a multiple of 128")
    a, b = a.float(), b.float()
    k = a.shape[1]
    pad = -k % TILE
    a_chunks = F.pad(a, (0, pad)).view(a.shape[0], -1, TILE)
    b_chunks = F.pad(b, (0, pad)).view(b.shape[0], -1, TILE)
    a_q = fake_quant_e4m3(a_chunks, _tile_scales(a_chunks))
    b_q = fake_quant_e4m3(b_chunks, _block_scales(b_chunks) if b_blocks else _tile_scales(b_chunks))
    # exact sums of `STEP` products (one MMA instruction's worth), then a limited-precision running sum that
    # is promoted (added exactly in FP32) every `promote_every` elements
    steps = a_q.shape[1] * TILE // STEP
    sums = torch.einsum("mst,nst->smn", a_q.view(a.shape[0], steps, STEP), b_q.view(b.shape[0], steps, STEP))
    per_promotion = promote_every // STEP
    total = torch.zeros(sums.shape[1:], dtype=torch.float32)
    for start in range(0, steps, per_promotion):
        if accumulation_bits is None:
            total += sums[start : start + per_promotion].sum(0)
            continue
        acc = torch.zeros_like(total)
        for step in range(start, min(start + per_promotion, steps)):
            acc = round_mantissa(acc + sums[step], accumulation_bits)
        total += acc
    return total


class _FP8LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, accumulation_bits: int | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.accumulation_bits = accumulation_bits
        return fp8_gemm(x, weight, b_blocks=True, accumulation_bits=accumulation_bits).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        bits = ctx.accumulation_bits
        grad = grad.contiguous()
        dgrad = fp8_gemm(grad, weight.t(), b_blocks=True, accumulation_bits=bits).to(x.dtype)
        wgrad = fp8_gemm(grad.t(), x.t(), b_blocks=False, accumulation_bits=bits).to(weight.dtype)
        return dgrad, wgrad, None


class FP8Linear(nn.Linear):
    """``nn.Linear`` whose three GEMMs are simulated in FP8 (same parameters and state-dict keys).

    Args:
        in_features: input width.
        out_features: output width.
        bias: add a bias (in full precision, after the GEMM).
        accumulation_bits: mantissa bits of the in-chunk accumulation (None: exact).
    """

    def __init__(
        self, in_features: int, out_features: int, *, bias: bool = False, accumulation_bits: int | None = 13
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.accumulation_bits = accumulation_bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in) -> (..., out)``."""
        flat = x.reshape(-1, x.shape[-1])
        y = _FP8LinearFunction.apply(flat, self.weight, self.accumulation_bits)
        y = y.view(*x.shape[:-1], self.out_features)
        return y + self.bias if self.bias is not None else y


def fp8_error_report(
    *, m: int = 256, k: int = 2048, n: int = 256, seed: int = 0, outliers: bool = True
) -> dict[str, float]:
    """Relative Frobenius error of one GEMM against a float64 reference, FP8 variants vs BF16.

    Args:
        m: rows (tokens).
        k: reduction length.
        n: output features.
        seed: random seed.
        outliers: give a few activation channels 1000x magnitude (what makes per-tensor scaling fail).

    Returns:
        Relative errors against float64: ``bf16`` (inputs rounded to BF16), ``fp8_tile`` (the paper's recipe),
        ``fp8_no_promotion`` (limited-precision accumulation over the whole reduction), ``fp8_per_tensor`` (one
        scale per tensor); and against FP8 with exact accumulation: ``accumulation_promoted`` and
        ``accumulation_no_promotion`` (the error the accumulation alone adds).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    if outliers:
        x[:, torch.randperm(k, generator=g)[:8]] *= 1000
    w = torch.randn(n, k, generator=g) / k**0.5
    ref = x.double() @ w.double().t()

    def rel(y: torch.Tensor) -> float:
        return float((y.double() - ref).norm() / ref.norm())

    bf16 = x.bfloat16().float() @ w.bfloat16().float().t()
    tile = fp8_gemm(x, w, b_blocks=True)
    no_promotion = fp8_gemm(x, w, b_blocks=True, promote_every=TILE * (-(-k // TILE)))
    xs, ws = x.abs().max() / E4M3_MAX, w.abs().max() / E4M3_MAX
    per_tensor = fake_quant_e4m3(x, xs) @ fake_quant_e4m3(w, ws).t()
    exact_accumulation = fp8_gemm(x, w, b_blocks=True, accumulation_bits=None)

    def rel_to_exact(y: torch.Tensor) -> float:
        return float((y - exact_accumulation).norm() / exact_accumulation.norm())

    return {
        "accumulation_promoted": rel_to_exact(tile),
        "accumulation_no_promotion": rel_to_exact(no_promotion),
        "bf16": rel(bf16),
        "fp8_tile": rel(tile),
        "fp8_no_promotion": rel(no_promotion),
        "fp8_per_tensor": rel(per_tensor),
    }
