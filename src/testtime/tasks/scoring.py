"""Log-probability scoring of continuations: what cloze-style multiple choice needs from an LLM.

:class:`ContinuationScorer` is the minimal protocol the tasks need (the LLM layer may implement it on any
backend); :class:`TransformersScorer` implements it over a plain transformers causal LM and tokenizer.

Shapes: B batch, T tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from testtime.llm.protocol import ContinuationScore

__all__ = ["ContinuationScore", "ContinuationScorer", "TransformersScorer", "as_score"]


@runtime_checkable
class ContinuationScorer(Protocol):
    """Anything that scores continuations of a prompt by log-probability."""

    def score_continuations(self, prompt: str, continuations: Sequence[str]) -> list[ContinuationScore]:
        """Score each continuation given the prompt.

        Args:
            prompt: the shared context.
            continuations: texts to score after it (include a leading space where one belongs).

        Returns:
            One :class:`ContinuationScore` per continuation (a plain float is accepted by the tasks too,
            read as a log-probability sum of unknown length).
        """
        ...


def as_score(value: ContinuationScore | float) -> tuple[float, int | None]:
    """``(logprob, num_tokens or None)`` from a scorer's output item."""
    if isinstance(value, tuple):
        return float(value[0]), int(value[1])
    return float(value), None


class TransformersScorer:
    """:class:`ContinuationScorer` over a transformers causal LM (any ``AutoModelForCausalLM``).

    The prompt and each continuation are tokenized separately and concatenated (so the continuation's
    tokens do not depend on the prompt's last characters), then one forward pass per batch gives
    ``log_softmax(logits[t - 1])[token_t]`` for every continuation token.

    With ``share_prompt`` (the default) the prompt runs once and its key/value cache is repeated for each
    batch of continuations, so only the continuations' tokens are recomputed (the prompt is usually much
    longer than an option); without it every row runs prompt + continuation in full. Both give the same
    numbers (tested).

    Args:
        model: a causal LM in eval mode.
        tokenizer: its tokenizer.
        batch_size: continuations per forward pass.
        share_prompt: compute the prompt once and reuse its KV cache.
    """

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8, share_prompt: bool = True) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.share_prompt = share_prompt

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def score_continuations(self, prompt: str, continuations: Sequence[str]) -> list[ContinuationScore]:
        import torch

        context = self._encode(prompt)
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if not context:  # the first continuation token needs something to condition on
            if bos is None:
                raise ValueError("an empty prompt needs a tokenizer with a BOS token")
            context = [bos]
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        encoded = [self._encode(c) for c in continuations]
        if any(not ids for ids in encoded):
            raise ValueError("continuations must be non-empty after tokenization")
        if self.share_prompt:
            return self._score_shared(context, encoded, device, pad)
        out: list[ContinuationScore] = []
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            length = max(len(context) + len(ids) for ids in batch)
            input_ids = torch.full((len(batch), length), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), length), dtype=torch.long)
            for row, ids in enumerate(batch):  # right padding: real tokens keep positions 0..n-1
                sequence = context + ids
                input_ids[row, : len(sequence)] = torch.tensor(sequence)
                attention[row, : len(sequence)] = 1
            with torch.no_grad():
                logits = self.model(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device)
                ).logits
            logprobs = torch.log_softmax(logits.double(), dim=-1)  # (B, T, V)
            for row, ids in enumerate(batch):
                positions = torch.arange(len(context) - 1, len(context) + len(ids) - 1)
                targets = torch.tensor(ids)
                total = logprobs[row, positions, targets].sum().item()
                out.append(ContinuationScore(logprob=total, num_tokens=len(ids)))
        return out

    def _score_shared(
        self, context: list[int], encoded: list[list[int]], device: Any, pad: int
    ) -> list[ContinuationScore]:
        """Prompt once (KV cache), then batches of continuations attending to the repeated cache."""
        import copy

        import torch

        from testtime.llm.compat import cache_kwargs, returned_cache

        with torch.no_grad():
            prompt_out = self.model(input_ids=torch.tensor([context], device=device), use_cache=True)
        first = torch.log_softmax(prompt_out.logits[0, -1].double(), dim=-1)  # (V,) predicts token 0
        cache = returned_cache(prompt_out)
        length = len(context)
        out: list[ContinuationScore] = []
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            width = max(len(ids) for ids in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), length + width), dtype=torch.long)
            attention[:, :length] = 1
            for row, ids in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, length : length + len(ids)] = 1
            repeated = copy.deepcopy(cache)
            repeated.batch_repeat_interleave(len(batch))
            positions = torch.arange(length, length + width).expand(len(batch), width)
            with torch.no_grad():
                logits = self.model(
                    input_ids=input_ids.to(device),
                    attention_mask=attention.to(device),
                    position_ids=positions.to(device),
                    **cache_kwargs(self.model, repeated),
                    use_cache=True,
                ).logits
            logprobs = torch.log_softmax(logits.double(), dim=-1)  # (B, width, V): position j predicts j + 1
            for row, ids in enumerate(batch):
                total = first[ids[0]].item()
                if len(ids) > 1:
                    steps = torch.arange(len(ids) - 1)
                    total += logprobs[row, steps, torch.tensor(ids[1:])].sum().item()
                out.append(ContinuationScore(logprob=total, num_tokens=len(ids)))
        return out
