"""The package's one next-token sampler: temperature, top-k, top-p (nucleus), greedy, per-row generators.

Every row of a batch carries its own sampling parameters and, optionally, its own ``torch.Generator``:
a row draws exactly one uniform number per step from its generator and turns it into a token by inverting
the cumulative distribution of its (filtered) probabilities. A row's token therefore depends only on its
own logits, parameters and generator, never on the other rows of the batch: a seeded request gives the
same tokens alone or batched with any others (continuous batching relies on it).

The filters, in the order Hugging Face's ``generate`` and vLLM apply them:

1. temperature: ``logits / T``; ``T = 0`` is greedy decoding (argmax, no random number drawn);
2. top-k (Fan et al. 2018): keep the ``k`` most likely tokens;
3. top-p (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"): keep the smallest set of
   most likely tokens whose probability (renormalised after top-k) reaches ``p``; the most likely token
   always stays.

Rows with a filter are sampled in the descending-probability order of their tokens, rows without one in
vocabulary order; which order a row uses depends only on its own parameters. Finding the nucleus needs
the tokens sorted by probability; a full sort of a 50k vocabulary costs milliseconds per row on a CPU,
so the top 256 are taken first (``topk``) and a row falls back to a full sort only when they do not reach
``p``.

Log-probabilities are returned for the chosen tokens (and, optionally, the ``K`` most likely tokens) under
either the raw distribution ``log_softmax(logits)`` (what a policy-gradient loss at temperature 1 and
OpenAI's API report) or the temperature-scaled one ``log_softmax(logits / T)``, the distribution the token
was drawn from before truncation (what RL importance ratios on temperature-scaled logits need, as TRL's
GRPO computes them). Greedy rows report raw log-probabilities in both modes.

Shape legend: ``B`` rows, ``V`` vocabulary, ``K`` top log-probabilities per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["SampleOutput", "filter_logits", "sample", "sample_next"]

_CANDIDATES = 256  # tokens taken by topk before a full sort is needed for top-p

RowParam = float | Sequence[float] | torch.Tensor
Generators = torch.Generator | Sequence[torch.Generator | None] | None


@dataclass(kw_only=True)
class SampleOutput:
    """What :func:`sample` returns.

    Attributes:
        tokens: ``(B,)`` chosen token ids.
        logprobs: ``(B,)`` log-probability of each chosen token (None unless asked for).
        top_ids: ``(B, K)`` the ``K`` most likely token ids, most likely first (None unless asked for).
        top_logprobs: ``(B, K)`` their log-probabilities.
    """

    tokens: torch.Tensor
    logprobs: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None


def _rows(value: RowParam | None, num_rows: int, default: float, device: torch.device) -> torch.Tensor:
    """A per-row float64 parameter from a scalar, a sequence or a tensor."""
    if value is None:
        return torch.full((num_rows,), default, dtype=torch.float64, device=device)
    if isinstance(value, int | float):
        return torch.full((num_rows,), float(value), dtype=torch.float64, device=device)
    out = torch.as_tensor(value, dtype=torch.float64, device=device).reshape(-1)
    if out.numel() != num_rows:
        raise ValueError(f"a per-row parameter needs {num_rows} values, got {out.numel()}")
    return out


def _check(temperature: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor) -> None:
    if bool((temperature < 0).any()):
        raise ValueError("temperature must be >= 0")
    if bool(((top_p <= 0) | (top_p > 1)).any()):
        raise ValueError("top_p must be in (0, 1]")
    if bool((top_k < 0).any()):
        raise ValueError("top_k must be >= 0 (0 or None: no top-k)")


def filter_logits(
    logits: torch.Tensor,
    *,
    temperature: RowParam = 1.0,
    top_p: RowParam = 1.0,
    top_k: int | Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Temperature-scaled logits with the tokens outside top-k / top-p set to ``-inf`` (the reference form).

    A plain full-sort implementation of the distribution :func:`sample` draws from (tests compare the two).

    Args:
        logits: ``(B, V)``.
        temperature: scalar or ``(B,)``; must be > 0 here.
        top_p: scalar or ``(B,)`` in (0, 1].
        top_k: None, an int or ``(B,)`` ints; 0 means no top-k.

    Returns:
        ``(B, V)`` in at least float32.
    """
    num_rows, vocab = logits.shape
    t = _rows(temperature, num_rows, 1.0, logits.device)
    p = _rows(top_p, num_rows, 1.0, logits.device)
    k = _rows(top_k, num_rows, 0.0, logits.device)
    _check(t, p, k)
    if bool((t == 0).any()):
        raise ValueError("filter_logits needs temperature > 0 (0 is greedy decoding)")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    scaled = logits.to(dtype) / t.to(dtype)[:, None]
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=logits.device)[None]
    keep_k = (k[:, None] == 0) | (rank < k[:, None])
    sorted_logits = sorted_logits.masked_fill(~keep_k, float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    above = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
    drop = (above >= p.to(dtype)[:, None]) & (rank > 0)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)


def _uniforms(generators: Generators, rows: list[int], num_rows: int, device: torch.device) -> torch.Tensor:
    """One uniform number in [0, 1) per listed row, from that row's generator (or the shared/global one)."""
    if generators is None or isinstance(generators, torch.Generator):
        return torch.rand(len(rows), dtype=torch.float64, generator=generators, device=device)
    if len(generators) != num_rows:
        raise ValueError(
            f"give one generator (or None) per row: {num_rows} rows, {len(generators)} generators"
        )
    values = [
        torch.rand((), dtype=torch.float64, generator=generators[r], device=generators[r].device)
        if generators[r] is not None
        else torch.rand((), dtype=torch.float64, device=device)
        for r in rows
    ]
    return torch.stack([v.to(device) for v in values]) if values else torch.empty(0, dtype=torch.float64)


def _invert_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index ``j`` with ``cdf[j-1] <= u * total < cdf[j]`` per row (never a zero-probability index)."""
    cdf = probs.to(torch.float64).cumsum(dim=-1)
    total = cdf[:, -1:]
    index = torch.searchsorted(cdf, u[:, None] * total, right=True).squeeze(-1)
    last = (cdf < total).sum(dim=-1)  # first index that reaches the total: the last token with mass
    return torch.minimum(index, last)


def _sorted_candidates(scaled: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor):
    """``(values, ids)`` of each row's most likely tokens, sorted, enough to hold its top-k and nucleus."""
    vocab = scaled.shape[-1]
    width = min(vocab, max(_CANDIDATES, int(top_k.max().item())))
    values, ids = scaled.topk(width, dim=-1)
    if width < vocab:
        # The nucleus must fit among the candidates (measured on the top-k-limited distribution).
        log_total = scaled.logsumexp(dim=-1, keepdim=True)
        limited = (top_k > 0) & (top_k <= width)
        mass = (values - log_total).exp().sum(dim=-1)
        if not bool((limited | (mass >= top_p.to(mass.dtype))).all()):
            values, ids = scaled.sort(dim=-1, descending=True)
    return values, ids


def sample(
    logits: torch.Tensor,
    *,
    temperature: RowParam = 1.0,
    top_p: RowParam = 1.0,
    top_k: int | Sequence[int] | torch.Tensor | None = None,
    generators: Generators = None,
    logprobs: bool = False,
    logprobs_scaled: bool | Sequence[bool] = False,
    num_top_logprobs: int = 0,
) -> SampleOutput:
    """Draw one token per row (see the module docstring).

    Args:
        logits: ``(B, V)`` next-token logits.
        temperature: scalar or ``(B,)``; 0 is greedy (argmax).
        top_p: scalar or ``(B,)`` nucleus threshold in (0, 1]; 1 keeps everything.
        top_k: None, an int or ``(B,)`` ints; 0 or None keeps everything.
        generators: None (torch's global generator), one generator for the batch, or one per row (None
            entries use the global generator). With one per row, a row's draw never depends on the others.
        logprobs: return the chosen tokens' log-probabilities.
        logprobs_scaled: scalar or per row: log-probabilities of ``softmax(logits / T)`` instead of the raw
            ``softmax(logits)``.
        num_top_logprobs: also return the ``K`` most likely tokens and their log-probabilities (same
            distribution as ``logprobs``).

    Returns:
        A :class:`SampleOutput`.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, V), got shape {tuple(logits.shape)}")
    num_rows, vocab = logits.shape
    device = logits.device
    t = _rows(temperature, num_rows, 1.0, device)
    p = _rows(top_p, num_rows, 1.0, device)
    k = _rows(top_k, num_rows, 0.0, device).clamp(max=vocab)
    _check(t, p, k)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    tokens = logits.argmax(dim=-1)
    sampled = (t > 0).tolist()
    filtered = ((p < 1) | (k > 0)).tolist()
    plain_rows = [r for r in range(num_rows) if sampled[r] and not filtered[r]]
    filter_rows = [r for r in range(num_rows) if sampled[r] and filtered[r]]
    u = _uniforms(generators, plain_rows + filter_rows, num_rows, device)
    if plain_rows:
        index = torch.tensor(plain_rows, device=device)
        scaled = logits[index].to(dtype) / t[index].to(dtype)[:, None]
        tokens[index] = _invert_cdf(scaled.softmax(dim=-1), u[: len(plain_rows)])
    if filter_rows:
        index = torch.tensor(filter_rows, device=device)
        scaled = logits[index].to(dtype) / t[index].to(dtype)[:, None]
        row_p, row_k = p[index], k[index]
        values, ids = _sorted_candidates(scaled, row_p, row_k)
        rank = torch.arange(values.shape[-1], device=device)[None]
        values = values.masked_fill((row_k[:, None] > 0) & (rank >= row_k[:, None]), float("-inf"))
        probs = values.softmax(dim=-1)
        above = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill((above >= row_p.to(dtype)[:, None]) & (rank > 0), 0.0)
        choice = _invert_cdf(probs, u[len(plain_rows) :])
        tokens[index] = ids.gather(-1, choice[:, None]).squeeze(-1)
    out = SampleOutput(tokens=tokens)
    if logprobs or num_top_logprobs > 0:
        scale = torch.ones(num_rows, dtype=dtype, device=device)
        wants_scaled = _rows([float(x) for x in _as_flags(logprobs_scaled, num_rows)], num_rows, 0.0, device)
        use = (wants_scaled > 0) & (t > 0)
        scale = torch.where(use, t.to(dtype), scale)
        log_probs = (logits.to(dtype) / scale[:, None]).log_softmax(dim=-1)
        if logprobs:
            out.logprobs = log_probs.gather(-1, tokens[:, None]).squeeze(-1)
        if num_top_logprobs > 0:
            out.top_logprobs, out.top_ids = log_probs.topk(min(num_top_logprobs, vocab), dim=-1)
    return out


def _as_flags(value: bool | Sequence[bool], num_rows: int) -> list[bool]:
    if isinstance(value, bool):
        return [value] * num_rows
    flags = [bool(v) for v in value]
    if len(flags) != num_rows:
        raise ValueError(f"logprobs_scaled needs {num_rows} values, got {len(flags)}")
    return flags


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(B, V)`` logits to ``(B,)`` token ids: :func:`sample` with one set of parameters for every row."""
    return sample(logits, temperature=temperature, top_p=top_p, top_k=top_k, generators=generator).tokens
