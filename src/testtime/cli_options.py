"""The shared flag vocabulary of the ``testtime`` commands: one name, short form, default, help and check per flag.

Every command that samples or trains builds its options from these factories, so ``--temperature`` means
the same thing, has the same default and rejects the same bad values everywhere (docs/cli.md lists them).
Checks run while the command line is parsed, before any model loads: a bad value is a usage error (exit
status 2) whose message names the flag. Nothing here imports torch until a ``--device`` other than
``cpu``/``auto`` has to be checked.

=======================  =====  ===========  ==============================================
flag                     short  default      meaning
=======================  =====  ===========  ==============================================
``--model``              -m     per command  model name, folder or file
``--max-new-tokens``            128          tokens generated per completion (1..1,000,000)
``--num-samples``        -n     1            completions per prompt (1..10,000)
``--temperature``        -t     0.0          softmax temperature, 0 = greedy (0..100)
``--top-p``                     1.0          nucleus threshold in (0, 1]; 1 keeps all
``--top-k``                     0            keep the k most likely tokens; 0 keeps all
``--seed``                      0            seed of every random draw (0..2**32-1)
``--threads``                   torch's      torch CPU threads (1..1024)
``--device``                    per command  auto, cpu, cuda, cuda:N (checked to exist)
``--out``                -o     runs/<sys>   the run folder
``--max-steps``                 per command  optimizer steps (1..10**9)
``--no-progress``               off          a line per log interval instead of a bar
=======================  =====  ===========  ==============================================
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import typer

from testtime.errors import UserError

__all__ = [
    "MAX_NEW_TOKENS",
    "NUM_SAMPLES",
    "SEED",
    "TEMPERATURE",
    "TOP_K",
    "TOP_P",
    "check_device",
    "device_callback",
    "device_option",
    "finite",
    "positive",
    "run_folder",
    "max_new_tokens_option",
    "max_steps_option",
    "model_option",
    "no_progress_option",
    "num_samples_option",
    "out_option",
    "seed_option",
    "temperature_option",
    "threads_option",
    "top_k_option",
    "top_p_option",
]

# the shared defaults
MAX_NEW_TOKENS = 128
NUM_SAMPLES = 1
TEMPERATURE = 0.0
TOP_P = 1.0
TOP_K = 0
SEED = 0
MAX_SEED = 2**32 - 1  # NumPy's limit; torch accepts it too

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def finite(value: float | None) -> float | None:
    """Option callback: reject NaN and infinities (a range check alone lets NaN through)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def positive(value: float | None) -> float | None:
    """Option callback: a finite number > 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} is not a finite number > 0")
    return value


def _probability(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0 < value <= 1):
        raise typer.BadParameter(f"{value} is not in (0, 1]")
    return value


def check_device(name: str) -> str:
    """``name`` if it names a device this torch can use: auto, cpu, mps, cuda or cuda:N.

    Raises:
        ValueError: the name is malformed, or the device is not available (e.g. cuda on a CPU-only torch).
    """
    if not _DEVICE.match(name):
        raise ValueError(f"{name!r} is not a device: use auto, cpu, cuda or cuda:N")
    if name in ("auto", "cpu"):
        return name
    import torch

    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError("mps is not available on this machine")
        return name
    if not torch.cuda.is_available():
        raise ValueError(
            f"{name} requested but this torch has no usable CUDA device (CPU-only build or no GPU)"
        )
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise ValueError(f"{name} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return name


def device_callback(value: str | None) -> str | None:
    if value is None:
        return value
    try:
        return check_device(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def run_folder(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """Create the run folder ``path`` now, so that a bad ``--out`` fails in one line before any model loads.

    Raises:
        UserError: a file is in the way, the folder cannot be created, or it is not writable.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag} {folder}: cannot create the run folder ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {folder}: the run folder is not writable")
    return folder


def model_option(default: Any, help_text: str) -> Any:
    return typer.Option(default, "--model", "-m", help=help_text)


def max_new_tokens_option(default: int | None = MAX_NEW_TOKENS, help_text: str | None = None) -> Any:
    return typer.Option(
        default,
        "--max-new-tokens",
        min=1,
        max=1_000_000,
        help=help_text or "Tokens generated per completion at most.",
    )


def num_samples_option(default: int | None = NUM_SAMPLES, help_text: str | None = None) -> Any:
    return typer.Option(
        default, "--num-samples", "-n", min=1, max=10_000, help=help_text or "Completions per prompt."
    )


def temperature_option(default: float | None = TEMPERATURE, help_text: str | None = None) -> Any:
    return typer.Option(
        default,
        "--temperature",
        "-t",
        min=0.0,
        max=100.0,
        callback=finite,
        help=help_text or "Softmax temperature; 0 is greedy decoding.",
    )


def top_p_option(default: float | None = TOP_P, help_text: str | None = None) -> Any:
    return typer.Option(
        default,
        "--top-p",
        callback=_probability,
        help=help_text
        or "Nucleus sampling: keep the most likely tokens up to this probability mass (1: all).",
    )


def top_k_option(default: int | None = TOP_K) -> Any:
    return typer.Option(
        default, "--top-k", min=0, max=1_000_000_000, help="Keep the k most likely tokens (0: all)."
    )


def seed_option(default: int | None = SEED, help_text: str | None = None) -> Any:
    return typer.Option(
        default, "--seed", min=0, max=MAX_SEED, help=help_text or "Seed of every random draw."
    )


def threads_option(default: int | None = None, help_text: str | None = None) -> Any:
    return typer.Option(
        default,
        "--threads",
        min=1,
        max=1024,
        help=help_text
        or "torch CPU threads (default: torch's choice; 1 is often fastest on a busy machine).",
    )


def device_option(default: str | None = "cpu", help_text: str | None = None) -> Any:
    return typer.Option(
        default,
        "--device",
        callback=device_callback,
        help=help_text or "auto (cuda when available), cpu, cuda or cuda:N.",
    )


def out_option(default: str | None, help_text: str | None = None) -> Any:
    return typer.Option(
        default, "--out", "-o", help=help_text or "Run folder (checkpoints, config.yaml, metrics.jsonl)."
    )


def max_steps_option(default: int | None, help_text: str | None = None) -> Any:
    return typer.Option(
        default, "--max-steps", min=1, max=1_000_000_000, help=help_text or "Optimizer steps."
    )


def no_progress_option(help_text: str | None = None) -> Any:
    return typer.Option(
        False,
        "--no-progress",
        help=help_text or "No progress bar: print one line per log interval instead.",
    )
