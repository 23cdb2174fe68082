"""Multi-token prediction (DeepSeek-V3 Section 2.2, eqs. 21-25): the loss-weight schedule and
self-speculative decoding with the first MTP module as the drafter.

The modules themselves are :class:`testtime.deepseek.model.MTPModule` (depth k combines the normalised
h^{k-1}_i with the embedding of t_{i+k} and predicts t_{i+k+1}); their losses are computed by
:meth:`DeepSeekV3ForCausalLM.mtp_losses` and weighted ``lambda / D * sum_k L^k`` (eq. 25).

Speculative decoding (greedy, batch 1): after the main model has produced token t_{n} from h_{n-1}, the MTP
module drafts t_{n+1} from (h_{n-1}, t_n); one main forward over [t_n, draft] verifies it. If the main model
agrees, both tokens are kept plus the main model's next token (two tokens for one main step); else the draft's
cache row is cropped and the main model's own token is kept. The output is exactly plain greedy decoding (tested).
The MTP module keeps its own latent cache, fed with every confirmed (h_i, t_{i+1}) pair.

Shape legend: ``n`` tokens so far, ``p`` pending (h, token) pairs, ``D`` model width.

Deviations: drafting uses the first MTP module only (the release has one); deeper modules are trained but
not used to draft chains.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from testtime.deepseek.mla import MLACache
from testtime.deepseek.model import DeepSeekV3ForCausalLM

__all__ = ["MTPWeightSchedule", "SpeculativeStats", "mtp_drafter", "speculative_generate"]

# (hidden (1, p, D), next tokens (1, p)) -> drafted token id; called once per verification step.
Drafter = Callable[[torch.Tensor, torch.Tensor], int]


@dataclass(kw_only=True)
class MTPWeightSchedule:
    """lambda over training: ``first`` until ``switch_fraction`` of the steps, then ``then``.

    Attributes:
        first: lambda early in training (0.3 for the first 10T tokens in the paper).
        then: lambda afterwards (0.1 for the remaining 4.8T).
        switch_fraction: where the switch happens (10 / 14.8).
    """

    first: float = 0.3
    then: float = 0.1
    switch_fraction: float = 10.0 / 14.8

    def __call__(self, step: int, total_steps: int) -> float:
        """lambda for optimizer step ``step`` of ``total_steps``."""
        if total_steps <= 0 or step < self.switch_fraction * total_steps:
            return self.first
        return self.then


@dataclass
class SpeculativeStats:
    """What a speculative run did.

    Attributes:
        drafted: drafts proposed (= main-model verification steps).
        accepted: drafts the main model agreed with.
        main_steps: main-model forwards after the prefill.
        new_tokens: tokens produced.
        seconds: wall time.
    """

    drafted: int = 0
    accepted: int = 0
    main_steps: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        """accepted / drafted."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_step(self) -> float:
        """New tokens per main-model forward (1 for plain decoding)."""
        return self.new_tokens / max(self.main_steps + 1, 1)


def mtp_drafter(model: DeepSeekV3ForCausalLM, cache: MLACache) -> Drafter:
    """A drafter that runs the model's first MTP module over the pending pairs and returns its argmax.

    Args:
        model: a model with at least one MTP module.
        cache: the module's latent cache (one layer), extended with every call.

    Returns:
        The drafter.
    """
    if not len(model.mtp):
        raise ValueError("the model has no MTP module to draft with")
    module = model.mtp[0]

    def draft(hidden: torch.Tensor, tokens: torch.Tensor) -> int:
        start = cache.length
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        embedded = model.model.embed_tokens(tokens)
        cos, sin = model.model.rotary(positions, embedded.dtype)
        h = module(hidden, embedded, cos, sin, cache=cache, cache_layer=0)
        cache.advance(tokens.shape[1])
        return int(model.lm_head(h[:, -1]).argmax(-1))

    return draft


@torch.no_grad()
def speculative_generate(
    model: DeepSeekV3ForCausalLM,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    drafter: Drafter | None = None,
) -> tuple[torch.Tensor, SpeculativeStats]:
    """Greedy decoding with one drafted token per main-model step.

    Args:
        model: the model (eval mode).
        input_ids: ``(1, s)`` prompt.
        max_new_tokens: tokens to produce.
        eos_token_id: stop after it.
        drafter: proposes the next token from the pending (hidden, token) pairs; default the MTP module.

    Returns:
        ``(1, s + n')`` tokens (identical to greedy :func:`testtime.deepseek.generate.generate`) and the stats.
    """
    if input_ids.shape[0] != 1:
        raise ValueError("speculative decoding runs one sequence at a time (batch size 1)")
    begin = time.perf_counter()
    stats = SpeculativeStats()
    cache = model.new_cache(1, capacity=input_ids.shape[1] + max_new_tokens + 2)
    if drafter is None:
        drafter = mtp_drafter(
            model, model.new_cache(1, mtp=True, capacity=input_ids.shape[1] + max_new_tokens + 2)
        )
    out = model(input_ids, cache=cache)
    nxt = int(out.logits[0, -1].argmax())
    produced = [nxt]
    # pairs (h_i, t_{i+1}) the drafter has not seen yet
    hidden = out.hidden_states
    pending = torch.cat((input_ids[:, 1:], input_ids.new_tensor([[nxt]])), dim=1)
    while len(produced) < max_new_tokens and (eos_token_id is None or produced[-1] != eos_token_id):
        draft = drafter(hidden, pending)
        verify = input_ids.new_tensor([[produced[-1], draft]])
        out = model(verify, cache=cache)
        stats.main_steps += 1
        stats.drafted += 1
        greedy = out.logits[0].argmax(-1).tolist()
        if greedy[0] == draft:
            stats.accepted += 1
            produced += [draft, greedy[1]]
            hidden, pending = out.hidden_states, input_ids.new_tensor([[draft, greedy[1]]])
        else:
            cache.crop(cache.length - 1)
            produced.append(greedy[0])
            hidden, pending = out.hidden_states[:, :1], input_ids.new_tensor([[greedy[0]]])
    if eos_token_id is not None and eos_token_id in produced:
        produced = produced[: produced.index(eos_token_id) + 1]
    produced = produced[:max_new_tokens]
    stats.new_tokens = len(produced)
    stats.seconds = time.perf_counter() - begin
    return torch.cat((input_ids, input_ids.new_tensor([produced])), dim=1), stats
