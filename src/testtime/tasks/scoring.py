"""Log-probability scoring of continuations: what cloze-style multiple choice needs from an LLM.

:class:`ContinuationScorer` is the minimal protocol the tasks need (the LLM layer may implement it on any
backend); :class:`TransformersScorer` implements it over a plain transformers causal LM and tokenizer.

Shapes: B batch, T tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = ["ContinuationScore", "ContinuationScorer", "TransformersScorer", "as_score"]


class ContinuationScore(NamedTuple):
    """The log-probability of one continuation given a prompt.

    Attributes:
        logprob: ``sum_t log p(c_t | prompt, c_<t)`` over the continuation's tokens.
        num_tokens: how many tokens the continuation has.
    """

    logprob: float
    num_tokens: int


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

    Args:
        model: a causal LM in eval mode.
        tokenizer: its tokenizer.
        batch_size: continuations per forward pass.
    """

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

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
        out: list[ContinuationScore] = []
        for start in range(0, len(continuations), self.batch_size):
            batch = [self._encode(c) for c in continuations[start : start + self.batch_size]]
            if any(not ids for ids in batch):
                raise ValueError("continuations must be non-empty after tokenization")
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
