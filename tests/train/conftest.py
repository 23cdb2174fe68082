"""Fixtures for the trainer tests: a tiny run's configuration, as a TrainConfig and as CLI arguments."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from testtime.train.config import TrainConfig

TINY: dict[str, Any] = dict(
    preset="tiny",
    corpus=["shakespeare"],
    max_corpus_bytes=60_000,
    seq_len=32,
    batch_size=4,
    micro_batch_size=2,
    max_steps=4,
    warmup_steps=1,
    eval_every=2,
    eval_sequences=8,
    ckpt_every=0,
    log_every=1,
    progress=False,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run faster on one thread than on two contended ones; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Callable[..., TrainConfig]:
    """``tiny_config(**overrides)``: a few steps of the tiny Transformer on ~60 kB of tinyshakespeare bytes."""

    def make(**overrides: Any) -> TrainConfig:
        return TrainConfig(**{**TINY, "out_dir": str(tmp_path / "run"), **overrides})

    return make


@pytest.fixture
def tiny_cli_args() -> Callable[..., list[str]]:
    """``tiny_cli_args(out_dir, *extra)``: the same run as arguments of ``testtime lm train``."""

    def make(out_dir: Path, *extra: str) -> list[str]:
        return [
            "lm", "train", "--preset", "tiny", "--corpus", "shakespeare", "--set", "max_corpus_bytes=60000",
            "--seq-len", "32", "--batch-size", "4", "--micro-batch-size", "2", "--warmup-steps", "1",
            "--set", "eval_sequences=8", "--set", "log_every=1", "--no-progress", "--out", str(out_dir), *extra,
        ]  # fmt: skip

    return make
