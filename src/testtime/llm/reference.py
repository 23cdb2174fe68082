"""``transformers.generate`` on ragged prompts: the reference the engine is compared against.

Used by the demo and by benchmarks/generate.py, so both time the peer the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["hf_generate_greedy"]


def hf_generate_greedy(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
) -> tuple[list[list[int]], float]:
    """Greedy ``model.generate`` on left-padded prompts, each row cut after its first end-of-sequence token.

    Args:
        model: a transformers causal LM.
        prompts: token ids per row (ragged).
        max_new_tokens: the most tokens generated per row.
        eos_token_ids: tokens that end a row (kept in the output, as the engine keeps them).
        pad_token_id: the id used for left padding.

    Returns:
        ``(rows, seconds)``: the generated ids per row and the wall time of the ``generate`` call.
    """
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(list(p))
        mask[i, width - len(p) :] = 1
    eos = list(eos_token_ids)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad_token_id,
        )
    seconds = time.perf_counter() - start
    rows = []
    for row in out[:, width:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows, seconds
