"""Multi-token prediction (DeepSeek-V3 Section 2.2, eqs. 21-25): the MTP module, its loss, the schedule of
its weight lambda, and self-speculative decoding with the first MTP module as the drafter.

:class:`MTPModule` k combines the normalised h^{k-1}_i with the embedding of t_{i+k} and predicts t_{i+k+1}
(eqs. 21-23); :func:`mtp_losses` gives every depth's cross-entropy L^k (eq. 24; a mean over the predicted
tokens where the paper divides by T, see docs/fidelity/deepseek.md), which the model weights
``lambda / D * sum_k L^k`` (eq. 25); :class:`MTPWeightSchedule` is lambda over training (0.3, then 0.1).

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
from typing import TYPE_CHECKING

import torch
from torch import nn

from testtime.deepseek.block import DecoderLayer, cross_entropy
from testtime.deepseek.config import DeepSeekV3Config
from testtime.deepseek.layers import make_linear, norm
from testtime.deepseek.mla import AttentionMode, MLACache

if TYPE_CHECKING:  # the model imports this module
    from testtime.deepseek.model import DeepSeekV3ForCausalLM

__all__ = [
    "MTPModule",
    "MTPWeightSchedule",
    "SpeculativeStats",
    "mtp_drafter",
    "mtp_losses",
    "speculative_generate",
]

# (hidden (1, p, D), next tokens (1, p)) -> drafted token id; called once per verification step.
Drafter = Callable[[torch.Tensor, torch.Tensor], int]


class SharedHead(nn.Module):
    """The MTP module's own final norm; the output head itself is the main model's (shared)."""

    def __init__(self, config: DeepSeekV3Config) -> None:
        super().__init__()
        self.norm = norm(config.hidden_size, eps=config.rms_norm_eps)


class MTPModule(DecoderLayer):
    """One MTP module k (eqs. 21-23): ``h^k = TRM_k(M_k [RMSNorm(Emb(t_{i+k})) ; RMSNorm(h^{k-1}_i)])``.

    The concatenation order is the released checkpoint's (embedding first; the paper's eq. 21 writes the
    hidden state first). The embedding and the output head are the main model's; ``shared_head.norm`` is
    this module's own final norm.

    Args:
        config: the model config.
        layer_index: ``num_hidden_layers + k - 1`` (its key prefix in checkpoints).
    """

    def __init__(self, config: DeepSeekV3Config, layer_index: int) -> None:
        super().__init__(config, layer_index)
        self.enorm = norm(config.hidden_size, eps=config.rms_norm_eps)
        self.hnorm = norm(config.hidden_size, eps=config.rms_norm_eps)
        self.eh_proj = make_linear(2 * config.hidden_size, config.hidden_size, fp8=config.fp8)  # M_k
        self.shared_head = SharedHead(config)

    def forward(  # type: ignore[override]
        self,
        previous: torch.Tensor,
        embedded: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *,
        cache: MLACache | None = None,
        cache_layer: int = 0,
        mode: AttentionMode | None = None,
    ) -> torch.Tensor:
        """One depth.

        Args:
            previous: ``(b, s, D)`` h^{k-1}_i (the main model's normalised output for k = 1).
            embedded: ``(b, s, D)`` Emb(t_{i+k}).
            cos: rope cosines of positions i.
            sin: rope sines.
            cache: this module's latent cache (drafting).
            cache_layer: this module's index in ``cache``.
            mode: MLA path.

        Returns:
            ``(b, s, D)`` h^k after ``shared_head.norm`` (what the head reads and the next depth takes).
        """
        x = self.eh_proj(torch.cat((self.enorm(embedded), self.hnorm(previous)), dim=-1))
        x = super().forward(x, cos, sin, cache=cache, cache_layer=cache_layer, mode=mode)
        return self.shared_head.norm(x)


def mtp_losses(
    modules: nn.ModuleList,
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    targets: torch.Tensor,
    *,
    embed: nn.Embedding,
    rotary: nn.Module,
    head: nn.Linear,
) -> list[torch.Tensor]:
    """Per-depth MTP cross-entropies L^k (eqs. 21-24), each a mean over the tokens that depth predicts.

    Depth k combines h^{k-1}_i with Emb(t_{i+k}) for i < T - k and predicts t_{i+k+1} = ``targets[:, i + k]``.

    Args:
        modules: the D :class:`MTPModule`.
        hidden: ``(b, T, D)`` the main model's normalised output h^0.
        input_ids: ``(b, T)``.
        targets: ``(b, T')`` next tokens, ``targets[:, i]`` follows position i (T' = T or T - 1).
        embed: the shared embedding.
        rotary: the main model's rotary embedding, ``(positions, dtype) -> cos, sin``.
        head: the shared output head.

    Returns:
        One scalar per depth that still has a target (a depth without one, in a short sequence, is skipped).
    """
    losses = []
    previous = hidden
    length = input_ids.shape[1]
    for k, module in enumerate(modules, start=1):
        span = length - k
        predicted = targets.shape[1] - k  # positions of this depth that have a target
        if predicted < 1:
            break
        embedded = embed(input_ids[:, k:])
        cos, sin = rotary(torch.arange(span, device=input_ids.device), embedded.dtype)
        previous = module(previous[:, :span], embedded, cos, sin)
        losses.append(cross_entropy(head(previous[:, :predicted]), targets[:, k:]))
    return losses


@dataclass(kw_only=True)
class MTPWeightSchedule:
    """lambda over training: ``first`` until the switch, then ``then`` (Section 4.2: 0.3 for the first 10T
    tokens, 0.1 for the remaining 4.8T).

    The switch is at optimizer step ``switch_step`` when it is set, else at ``switch_fraction`` of the
    total steps when those are known; with neither, lambda stays ``first``.

    Attributes:
        first: lambda early in training (0.3).
        then: lambda afterwards (0.1).
        switch_fraction: where the switch happens as a fraction of training (10 / 14.8), or None.
        switch_step: where it happens as an optimizer step (overrides the fraction), or None.
    """

    first: float = 0.3
    then: float = 0.1
    switch_fraction: float | None = 10.0 / 14.8
    switch_step: int | None = None

    def __call__(self, step: int, total_steps: int | None = None) -> float:
        """lambda for optimizer step ``step`` (0-based) of ``total_steps``."""
        if self.switch_step is not None:
            return self.then if step >= self.switch_step else self.first
        if self.switch_fraction is None or not total_steps or total_steps <= 0:
            return self.first
        return self.then if step >= self.switch_fraction * total_steps else self.first


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
