"""Weight-only integer matrix products for decoding on CPUs: int4 (group-wise, asymmetric) and int8 (per row).

At batch 1 a decoding step reads every weight once per token, so its time is the bytes of the weights over
the memory bandwidth: bfloat16 reads 2 bytes per weight, int8 1 and int4 half a byte (plus one scale and
one offset per group of 32). The activations stay in bfloat16; only the weights are stored as integers and
expanded inside torch's CPU kernels (``_weight_int4pack_mm_for_cpu``, ``_weight_int8pack_mm``), which have
AVX-512 paths for bfloat16 activations.

int4 follows the group-wise affine scheme of GGUF's Q4_1: each group of :data:`GROUP` consecutive inputs
of an output row keeps a scale ``s`` and a minimum ``m`` and its weights are ``m + s q`` with ``q`` in
``0..15``. A weight matrix already on such a grid (a model loaded from a Q4_1 GGUF file) is re-quantized
onto the same grid, up to the bfloat16 rounding of ``s`` and ``m``. int8 keeps one symmetric scale per
output row (``s q``, ``q`` in ``-127..127``).

Shape legend: ``N`` output features, ``K`` input features, ``...`` leading dimensions of the input.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "GROUP",
    "QuantizedLinear",
    "dequantize",
    "quantize",
    "quantize_with_dense",
    "quantized_products_available",
]

#: Inputs per int4 group (one scale and one minimum each), as in GGUF's Q4_0 / Q4_1.
GROUP = 32

#: Output features the int4 kernel packs together: ``N`` is padded up to a multiple of this.
_N_BLOCK = 16

Kind = Literal["int4", "int8"]


class QuantizedLinear:
    """``y = x W^T + b`` with ``W`` stored as int4 or int8 (see the module docstring); build with :func:`quantize`.

    Attributes:
        kind: ``"int4"`` or ``"int8"``.
        out_features, in_features: ``N`` and ``K``.
        packed: int4: torch's packed layout of ``[N', K]`` 4-bit codes (``N'`` = ``N`` rounded up to a
            multiple of 16); int8: ``[N, K]`` int8 codes.
        scales: int4: ``[K / 32, N', 2]`` (scale, offset) per group, where a weight is
            ``(q - 8) * scale + offset``; int8: ``[N]`` one scale per row.
        bias: ``[N]`` or None.
    """

    def __init__(
        self,
        kind: Kind,
        packed: torch.Tensor,
        scales: torch.Tensor,
        bias: torch.Tensor | None,
        out_features: int,
        in_features: int,
    ) -> None:
        self.kind = kind
        self.packed = packed
        self.scales = scales
        self.bias = bias
        self.out_features = out_features
        self.in_features = in_features
        padded = -(-out_features // _N_BLOCK) * _N_BLOCK
        self._plain = kind == "int4" and bias is None and padded == out_features

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., K)`` bfloat16 -> ``(..., N)`` bfloat16."""
        if x.dtype != self.scales.dtype:
            raise TypeError(f"quantized products take {self.scales.dtype} inputs, got {x.dtype}")
        if self._plain and x.dim() == 2 and x.is_contiguous():  # the engine's case: no reshape, no slice
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, GROUP, self.scales)
        flat = x.reshape(-1, self.in_features).contiguous()  # the kernels need contiguous rows
        if self.kind == "int4":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scales)
            if y.shape[-1] != self.out_features:
                y = y[:, : self.out_features]
        else:
            y = torch.ops.aten._weight_int8pack_mm(flat, self.packed, self.scales)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def __repr__(self) -> str:
        return (
            f"QuantizedLinear({self.kind}, out_features={self.out_features}, in_features={self.in_features})"
        )


def _check(weight: torch.Tensor, kind: str) -> None:
    if kind not in ("int4", "int8"):
        raise ValueError(f"kind must be 'int4' or 'int8', got {kind!r}")
    if weight.dim() != 2:
        raise ValueError(f"a weight matrix [N, K] is expected, got shape {tuple(weight.shape)}")
    if weight.device.type != "cpu":
        raise ValueError(f"weight-only {kind} products run on CPUs only; the weight is on {weight.device}")
    if kind == "int4" and weight.shape[1] % GROUP:
        raise ValueError(f"int4 needs in_features divisible by {GROUP}, got {weight.shape[1]}")
    if not torch.isfinite(weight).all():
        raise ValueError("cannot quantize a weight with NaN or infinite entries")


def quantize(
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    kind: Kind = "int4",
    dtype: torch.dtype = torch.bfloat16,
) -> QuantizedLinear:
    """Quantize a ``[N, K]`` weight for weight-only products with ``dtype`` activations.

    int4: per group of 32 inputs, ``scale = (max - min) / 15`` and the codes are ``round((w - min) / scale)``
    computed against the scale and offset as stored (rounded to ``dtype``), clamped to ``0..15``; a constant
    group is stored as code 0 with scale ``|min| / 8``. int8: per row ``scale = max|w| / 127``, codes ``round(w / scale)``.

    Args:
        weight: ``[N, K]`` on the CPU, finite.
        bias: ``[N]`` or None (kept in ``dtype``).
        kind: ``"int4"`` (``K`` a multiple of 32) or ``"int8"``.
        dtype: the activations' dtype (bfloat16: the kernels' fast path).

    Returns:
        The :class:`QuantizedLinear`.
    """
    return quantize_with_dense(weight, bias, kind=kind, dtype=dtype)[0]


def quantize_with_dense(
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    kind: Kind = "int4",
    dtype: torch.dtype = torch.bfloat16,
) -> tuple[QuantizedLinear, torch.Tensor]:
    """:func:`quantize`, and the ``[N, K]`` weight it represents in ``dtype`` (:func:`dequantize`, rounded).

    For products over many rows, where the integer kernels lose to dense ones (they expand the weights
    once per row), a caller can multiply by the dense copy: the same weights, in ``dtype``.
    """
    _check(weight, kind)
    n, k = weight.shape
    w = weight.detach().to(torch.float32)
    b = None if bias is None else bias.detach().to(dtype).clone()
    if kind == "int8":
        scale = (w.abs().amax(dim=1) / 127).to(dtype)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = torch.round(w / scale.float()[:, None]).clamp_(-127, 127)
        dense = (codes * scale.float()[:, None]).to(dtype)
        linear = QuantizedLinear("int8", codes.to(torch.int8).contiguous(), scale.contiguous(), b, n, k)
        return linear, dense
    padded = -(-n // _N_BLOCK) * _N_BLOCK
    if padded != n:
        w = torch.cat([w, w.new_zeros(padded - n, k)])
    groups = w.reshape(padded, k // GROUP, GROUP)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    # A constant group (range 0) gets scale |min| / 8 (so that code 0 is its value), or 1 when it is 0.
    spread = torch.where(high > low, (high - low) / 15, low.abs() / 8)
    scale = spread.to(dtype).float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    offset = (low + 8 * scale).to(dtype).float()  # the kernel computes (q - 8) * scale + offset
    codes = torch.round((groups - offset[..., None]) / scale[..., None] + 8).clamp_(0, 15)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.reshape(padded, k).to(torch.int32), 1)
    scales = torch.stack([scale, offset], dim=-1).transpose(0, 1).contiguous().to(dtype)  # [K/32, N', 2]
    dense = ((codes - 8) * scale[..., None] + offset[..., None]).reshape(padded, k)[:n].to(dtype)
    return QuantizedLinear("int4", packed, scales, b, n, k), dense


def dequantize(linear: QuantizedLinear) -> torch.Tensor:
    """The ``[N, K]`` float32 weight a :class:`QuantizedLinear` multiplies by (the reference for tests).

    Computed from the stored codes, scales and offsets, independently of the kernels' packed layout (the
    int4 codes are read back by multiplying the identity matrix).
    """
    n, k = linear.out_features, linear.in_features
    if linear.kind == "int8":
        return linear.packed.float() * linear.scales.float()[:, None]
    # Recover the codes: products with the identity (scale 1, offset 8 => q) give q exactly in bfloat16.
    unit = torch.stack(
        [torch.ones(linear.scales.shape[:2]), torch.full(linear.scales.shape[:2], 8.0)], dim=-1
    ).to(linear.scales.dtype)
    eye = torch.eye(k, dtype=linear.scales.dtype)
    codes = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, linear.packed, GROUP, unit).float().t()  # [N', K]
    scale = linear.scales[..., 0].float().t().repeat_interleave(GROUP, dim=1)  # [N', K]
    offset = linear.scales[..., 1].float().t().repeat_interleave(GROUP, dim=1)
    return ((codes - 8) * scale + offset)[:n]


def quantized_products_available(kind: Kind = "int4") -> bool:
    """Whether this torch build runs weight-only ``kind`` products on the CPU (a tiny probe, exact result)."""
    try:
        weight = torch.tensor([[1.0] * GROUP] * _N_BLOCK)
        linear = quantize(weight, kind=kind)
        out = linear(torch.ones(1, GROUP, dtype=torch.bfloat16))
    except (RuntimeError, AttributeError, NotImplementedError, ValueError):
        return False
    return bool(torch.all(out == GROUP))
