"""The sampler against a plain per-row reference: filtered distributions, draws, batch independence."""

from __future__ import annotations

import math

import pytest
import torch

from testtime.nn.sampling import filter_logits, sample, sample_next


def _reference_probs(row: list[float], temperature: float, top_p: float, top_k: int) -> list[float]:
    """Temperature, then top-k, then top-p, one row, in plain Python floats."""
    scaled = [x / temperature for x in row]
    order = sorted(range(len(row)), key=lambda j: -scaled[j])
    if top_k:
        order = order[:top_k]
    peak = max(scaled[j] for j in order)
    weights = {j: math.exp(scaled[j] - peak) for j in order}
    total = sum(weights.values())
    kept, mass = [], 0.0
    for j in order:
        if kept and mass >= top_p:
            break
        kept.append(j)
        mass += weights[j] / total
    kept_total = sum(weights[j] for j in kept)
    return [weights[j] / kept_total if j in kept else 0.0 for j in range(len(row))]


def _reference_draw(probs: list[float], u: float, sorted_domain: bool) -> int:
    order = sorted(range(len(probs)), key=lambda j: -probs[j]) if sorted_domain else list(range(len(probs)))
    cumulative = 0.0
    for j in order:
        cumulative += probs[j]
        if u < cumulative and probs[j] > 0:
            return j
    return max((j for j in order if probs[j] > 0), key=order.index)


CASES = [(1.0, 1.0, 0), (0.7, 0.9, 0), (1.3, 1.0, 5), (0.5, 0.6, 8), (1.0, 0.3, 0), (2.0, 0.95, 3)]


def test_filter_logits_matches_the_reference() -> None:
    torch.manual_seed(0)
    logits = torch.randn(len(CASES), 40, dtype=torch.float64) * 2
    temps, ps, ks = zip(*CASES, strict=True)
    got = filter_logits(logits, temperature=list(temps), top_p=list(ps), top_k=list(ks)).softmax(-1)
    for i, (t, p, k) in enumerate(CASES):
        assert got[i].tolist() == pytest.approx(_reference_probs(logits[i].tolist(), t, p, k), abs=1e-12)


def test_draws_invert_the_reference_cdf_with_each_rows_generator() -> None:
    torch.manual_seed(1)
    logits = torch.randn(len(CASES), 60, dtype=torch.float64) * 2
    temps, ps, ks = zip(*CASES, strict=True)
    for trial in range(20):
        seeds = [100 * trial + i for i in range(len(CASES))]
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        out = sample(logits, temperature=list(temps), top_p=list(ps), top_k=list(ks), generators=generators)
        for i, (t, p, k) in enumerate(CASES):
            u = torch.rand((), dtype=torch.float64, generator=torch.Generator().manual_seed(seeds[i])).item()
            probs = _reference_probs(logits[i].tolist(), t, p, k)
            expected = _reference_draw(probs, u, sorted_domain=p < 1 or k > 0)
            assert int(out.tokens[i]) == expected


def test_a_row_draws_the_same_alone_or_batched() -> None:
    torch.manual_seed(2)
    logits = torch.randn(5, 300) * 3
    params = dict(
        temperature=[0.8, 0.0, 1.0, 1.2, 0.9], top_p=[1.0, 1.0, 0.9, 1.0, 0.5], top_k=[0, 0, 0, 20, 0]
    )
    batched = sample(logits, **params, generators=[torch.Generator().manual_seed(s) for s in range(5)])
    for row in range(5):
        alone = sample(
            logits[row : row + 1],
            temperature=params["temperature"][row],
            top_p=params["top_p"][row],
            top_k=params["top_k"][row],
            generators=[torch.Generator().manual_seed(row)],
        )
        assert int(alone.tokens[0]) == int(batched.tokens[row])
    assert int(batched.tokens[1]) == int(logits[1].argmax())


def test_empirical_frequencies_follow_the_filtered_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    draws = 6000
    for t, p, k in [(1.0, 1.0, 0), (0.8, 0.8, 0), (1.5, 1.0, 3)]:
        counts = torch.zeros(6)
        for _ in range(draws // 200):
            out = sample(logits.expand(200, 6), temperature=t, top_p=p, top_k=k, generators=generator)
            counts += torch.bincount(out.tokens, minlength=6)
        expected = torch.tensor(_reference_probs(logits[0].tolist(), t, p, k))
        assert (counts[expected == 0] == 0).all()
        # 5 standard deviations of a binomial count.
        tolerance = 5 * (draws * expected * (1 - expected)).sqrt() + 1
        assert ((counts - draws * expected).abs() <= tolerance).all(), (counts, draws * expected)


def test_greedy_logprobs_and_top_logprobs() -> None:
    torch.manual_seed(3)
    logits = torch.randn(4, 50, dtype=torch.float64)
    assert torch.equal(sample_next(logits, temperature=0.0), logits.argmax(-1))
    # A nucleus too small for a second token is greedy decoding.
    assert torch.equal(sample_next(logits, temperature=1.0, top_p=1e-9), logits.argmax(-1))
    assert torch.equal(sample_next(logits, temperature=1.0, top_k=1), logits.argmax(-1))
    temps = [0.5, 0.5, 0.0, 2.0]
    for scaled in (False, True):
        out = sample(
            logits,
            temperature=temps,
            generators=torch.Generator().manual_seed(0),
            logprobs=True,
            logprobs_scaled=scaled,
            num_top_logprobs=3,
        )
        for i, t in enumerate(temps):
            divisor = t if scaled and t > 0 else 1.0
            reference = (logits[i] / divisor).log_softmax(-1)
            assert out.logprobs[i].item() == pytest.approx(reference[out.tokens[i]].item(), abs=1e-12)
            top = reference.topk(3)
            assert out.top_ids[i].tolist() == top.indices.tolist()
            assert out.top_logprobs[i].tolist() == pytest.approx(top.values.tolist(), abs=1e-12)


def test_wide_nucleus_falls_back_to_a_full_sort() -> None:
    """A flat distribution whose nucleus holds more than the 256 topk candidates still samples exactly."""
    torch.manual_seed(4)
    logits = torch.randn(2, 2000, dtype=torch.float64) * 0.1
    seeds = [11, 12]
    out = sample(
        logits, temperature=1.0, top_p=0.9, generators=[torch.Generator().manual_seed(s) for s in seeds]
    )
    for i, s in enumerate(seeds):
        u = torch.rand((), dtype=torch.float64, generator=torch.Generator().manual_seed(s)).item()
        probs = _reference_probs(logits[i].tolist(), 1.0, 0.9, 0)
        assert sum(p > 0 for p in probs) > 256
        assert int(out.tokens[i]) == _reference_draw(probs, u, sorted_domain=True)


def test_bad_parameters_raise() -> None:
    logits = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="temperature"):
        sample(logits, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        sample(logits, top_p=0.0)
    with pytest.raises(ValueError, match="per-row"):
        sample(logits, temperature=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="generator"):
        sample(logits, generators=[None])
    with pytest.raises(ValueError, match=r"\(B, V\)"):
        sample(torch.zeros(5))
