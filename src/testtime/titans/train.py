"""Registers the Titans models with the shared trainer (``testtime.train``, docs/train.md).

Names: ``titans-lmm``, ``titans-mac``, ``titans-mag``, ``titans-mal`` and ``titans-swa`` (the
Transformer++ baseline with the same sliding window, for the Table 2 comparison); presets ``tiny``,
``small`` (minutes on 2 CPU cores) and ``paper_400m``.
"""

from __future__ import annotations

import dataclasses
from functools import partial

from testtime.titans.config import TitansConfig

__all__ = ["MODEL_NAMES"]

MODEL_NAMES = {
    "titans-lmm": "lmm",
    "titans-mac": "mac",
    "titans-mag": "mag",
    "titans-mal": "mal",
    "titans-swa": "transformer",
}

_DESCRIPTIONS = {
    "lmm": "Titans neural long-term memory alone (LMM)",
    "mac": "Titans memory as a context (eqs. 21-25)",
    "mag": "Titans memory as a gate (eqs. 26-28)",
    "mal": "Titans memory as a layer (eqs. 29-31)",
    "transformer": "sliding-window Transformer++ with the Titans window (the Table 2 baseline)",
}


def _build(config: TitansConfig, vocab_size: int):  # noqa: ANN202
    from testtime.titans.models import TitansLM

    return TitansLM(dataclasses.replace(config, vocab_size=vocab_size))


def _register() -> None:
    try:
        from testtime.train.registry import register_model
    except ModuleNotFoundError:  # the trainer is not installed: nothing to register
        return
    for name, variant in MODEL_NAMES.items():
        register_model(
            name,
            config_cls=TitansConfig,
            build=_build,
            presets={
                "tiny": partial(TitansConfig.tiny, variant),
                "small": partial(TitansConfig.small, variant),
                "paper_400m": partial(TitansConfig.paper_400m, variant),
            },
            default_preset="small",
            description=_DESCRIPTIONS[variant],
        )


_register()
