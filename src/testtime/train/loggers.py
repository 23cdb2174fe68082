"""Metric loggers: JSON lines always (``metrics.jsonl``), plus any of TensorBoard, Weights & Biases and trackio.

Each logger has ``log(metrics, step)`` and ``close()``; the loop always calls them (through
:class:`Loggers`, which fans out to none or several), so it never branches on whether logging is on.
The optional backends are imported only when chosen.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol

from testtime.errors import UserError

__all__ = ["JsonlLogger", "Logger", "Loggers", "make_loggers"]


class Logger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class JsonlLogger:
    """Appends one JSON object per call to ``<out_dir>/metrics.jsonl`` (``{"step": ..., "time": ..., ...}``)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / "metrics.jsonl"
        self._file = self.path.open("a")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._file.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardLogger:
    """Scalars to ``<out_dir>/tensorboard`` (view with ``tensorboard --logdir <out_dir>``)."""

    def __init__(self, out_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UserError("the tensorboard logger needs `pip install tensorboard`") from exc
        self._writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class _WandbLike:
    """Weights & Biases or trackio, which share ``init`` / ``log`` / ``finish``."""

    def __init__(self, module_name: str, *, project: str, name: str, config: dict[str, Any]) -> None:
        import importlib

        try:
            self._mod = importlib.import_module(module_name)
        except ImportError as exc:
            raise UserError(f"the {module_name} logger needs `pip install {module_name}`") from exc
        self._mod.init(project=project, name=name, config=config)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._mod.log(metrics, step=step)

    def close(self) -> None:
        self._mod.finish()


class Loggers:
    """Fans every call out to the chosen loggers (none: every call does nothing)."""

    def __init__(self, loggers: list[Logger] | None = None) -> None:
        self.loggers = loggers or []

    def log(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log(metrics, step)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def make_loggers(
    names: list[str],
    *,
    out_dir: Path,
    project: str,
    run_name: str,
    config: dict[str, Any],
    enabled: bool = True,
) -> Loggers:
    """Build the named loggers (only on the main process: ``enabled=False`` gives the no-op).

    ``jsonl`` (``<out_dir>/metrics.jsonl``) is always among them, whatever ``names`` says: every run keeps
    its history in its folder.
    """
    if not enabled:
        return Loggers()
    out: list[Logger] = []
    for name in ["jsonl", *(n for n in names if n != "jsonl")]:
        if name == "jsonl":
            out.append(JsonlLogger(out_dir))
        elif name == "tensorboard":
            out.append(TensorBoardLogger(out_dir))
        elif name in ("wandb", "trackio"):
            out.append(_WandbLike(name, project=project, name=run_name, config=config))
        else:
            raise UserError(f"unknown logger {name!r}")
    return Loggers(out)
