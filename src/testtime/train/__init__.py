"""The language-model trainer shared by the Transformer++ baseline, Titans and DeepSeek-V3.

Plug a model in with :func:`register_model` (see :mod:`testtime.train.registry` for the contract),
then train it with :func:`train` or ``testtime lm train --model NAME``. Heavy imports happen on use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from testtime.train.config import TrainConfig
    from testtime.train.loop import TrainResult, train
    from testtime.train.registry import LMOutput, ModelSpec, register_model

__all__ = ["LMOutput", "ModelSpec", "TrainConfig", "TrainResult", "register_model", "train"]

_WHERE = {
    "TrainConfig": "testtime.train.config",
    "TrainResult": "testtime.train.loop",
    "train": "testtime.train.loop",
    "LMOutput": "testtime.train.registry",
    "ModelSpec": "testtime.train.registry",
    "register_model": "testtime.train.registry",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'testtime.train' has no attribute {name!r}")
