"""What a language model's forward returns to the trainer: the package's one output type.

It lives at the bottom of the package so that model code (Titans, the Transformer++ baseline, user models)
can return it without importing the trainer; :mod:`testtime.train.registry` re-exports it.

Shape legend: ``b`` batch, ``t`` positions, ``V`` vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["LMOutput"]


@dataclass
class LMOutput:
    """What a model's forward returns.

    Attributes:
        logits: ``(b, t, V)`` next-token logits.
        loss: scalar training objective, or None without labels.
        metrics: extra scalars to log (e.g. an auxiliary loss, a load-balance statistic).
    """

    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)
