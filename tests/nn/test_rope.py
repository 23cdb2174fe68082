"""Rotary embeddings against complex-number references, and YaRN against transformers' implementation."""

from __future__ import annotations

import math

import pytest
import torch

from testtime.nn import RotaryEmbedding, YarnConfig, apply_rope, rope_cos_sin, rope_inv_freq, yarn_mscale


def _complex_rotate(pairs: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Reference: multiply complex numbers (..., t, d/2) by exp(i * position * freq)."""
    angles = positions.double()[:, None] * inv_freq.double()[None, :]
    return pairs * torch.polar(torch.ones_like(angles), angles)


def test_half_split_layout_matches_complex_rotation() -> None:
    torch.manual_seed(0)
    d, t = 16, 7
    x = torch.randn(2, 3, t, d, dtype=torch.float64)
    inv_freq, factor = rope_inv_freq(d, theta=500.0)
    assert factor == 1.0
    torch.testing.assert_close(
        inv_freq.double(), 500.0 ** (-torch.arange(0, d, 2).double() / d), rtol=1e-6, atol=0
    )
    positions = torch.arange(t) + 5
    cos, sin = rope_cos_sin(positions, inv_freq.double())
    out = apply_rope(x, cos, sin)
    ref = _complex_rotate(torch.complex(x[..., : d // 2], x[..., d // 2 :]), positions, inv_freq)
    torch.testing.assert_close(out, torch.cat((ref.real, ref.imag), dim=-1))


def test_interleaved_layout_matches_complex_rotation() -> None:
    torch.manual_seed(1)
    d, t = 8, 5
    x = torch.randn(2, t, d, dtype=torch.float64)
    inv_freq, _ = rope_inv_freq(d)
    positions = torch.arange(t)
    cos, sin = rope_cos_sin(positions, inv_freq.double())
    out = apply_rope(x, cos, sin, interleaved=True)
    ref = _complex_rotate(torch.view_as_complex(x.reshape(2, t, d // 2, 2).contiguous()), positions, inv_freq)
    torch.testing.assert_close(out, torch.view_as_real(ref).flatten(-2))


def test_layouts_differ_by_a_fixed_permutation() -> None:
    torch.manual_seed(2)
    d = 12
    x = torch.randn(4, 6, d, dtype=torch.float64)
    cos, sin = rope_cos_sin(torch.arange(6), rope_inv_freq(d)[0].double())
    perm = torch.cat((torch.arange(0, d, 2), torch.arange(1, d, 2)))  # interleaved -> half-split
    torch.testing.assert_close(
        apply_rope(x, cos, sin, interleaved=True)[..., perm], apply_rope(x[..., perm], cos, sin)
    )


def test_rotation_preserves_norm_and_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(3)
    d = 16
    rope = RotaryEmbedding(d, theta=100.0).double()
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)

    def rotated(vec: torch.Tensor, pos: int) -> torch.Tensor:
        cos, sin = rope(torch.tensor([pos]))
        return rope.rotate(vec[None], cos, sin)[0]

    torch.testing.assert_close(rotated(q, 11).norm(), q.norm())
    score = lambda m, n: torch.dot(rotated(q, m), rotated(k, n))
    torch.testing.assert_close(score(3, 1), score(10, 8))
    torch.testing.assert_close(score(0, 0), torch.dot(q, k))
    assert not torch.allclose(score(3, 1), score(3, 2))


def test_per_sequence_positions_broadcast_over_heads() -> None:
    torch.manual_seed(4)
    x = torch.randn(2, 3, 4, 8)
    rope = RotaryEmbedding(8)
    positions = torch.tensor([[0, 1, 2, 3], [10, 11, 12, 13]])
    cos, sin = rope(positions)
    out = rope.rotate(x, cos[:, None], sin[:, None])
    for b in range(2):
        c, s = rope(positions[b])
        torch.testing.assert_close(out[b], rope.rotate(x[b], c, s))


def test_low_precision_input_keeps_dtype() -> None:
    x = torch.randn(1, 2, 4, 8).bfloat16()
    cos, sin = RotaryEmbedding(8)(torch.arange(4))
    out = apply_rope(x, cos, sin)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), apply_rope(x.float(), cos, sin), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "params",
    [
        dict(factor=4.0, original_max_position_embeddings=64),
        dict(factor=40.0, original_max_position_embeddings=4096, mscale=1.0, mscale_all_dim=1.0),
        dict(
            factor=8.0, original_max_position_embeddings=512, mscale=0.707, mscale_all_dim=1.0, beta_fast=16.0
        ),
        dict(factor=2.0, original_max_position_embeddings=128, beta_slow=2.0, truncate=False),
        dict(factor=3.0, original_max_position_embeddings=256, attention_factor=1.5),
    ],
)
def test_yarn_matches_transformers(params: dict) -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    head_dim, theta = 64, 10000.0
    config = LlamaConfig(
        hidden_size=head_dim * 2,
        num_attention_heads=2,
        max_position_embeddings=int(params["factor"] * params["original_max_position_embeddings"]),
        rope_parameters={"rope_type": "yarn", "rope_theta": theta, **params},
    )
    expected_inv_freq, expected_factor = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    inv_freq, factor = rope_inv_freq(head_dim, theta=theta, yarn=YarnConfig(**params))
    torch.testing.assert_close(inv_freq, expected_inv_freq.float(), rtol=1e-6, atol=0)
    assert factor == pytest.approx(expected_factor, rel=1e-12)


def test_yarn_keeps_fast_and_interpolates_slow_frequencies() -> None:
    plain, _ = rope_inv_freq(64)
    scaled, factor = rope_inv_freq(64, yarn=YarnConfig(factor=16.0, original_max_position_embeddings=4096))
    assert torch.equal(scaled[:8], plain[:8])  # pairs 0..9 rotate > 32 times in 4096 positions
    torch.testing.assert_close(scaled[-8:], plain[-8:] / 16.0)  # pairs 23.. rotate < once
    assert factor == pytest.approx(0.1 * math.log(16.0) + 1.0)
    assert yarn_mscale(1.0) == 1.0 and yarn_mscale(40.0, 1.0) == pytest.approx(1.368888, rel=1e-5)


def test_bad_rope_parameters_raise() -> None:
    with pytest.raises(ValueError):
        rope_inv_freq(7)
    with pytest.raises(ValueError):
        YarnConfig(factor=0.5, original_max_position_embeddings=64)
