"""Checkpoints: safetensors weights, optimizer state, trainer state (step, data position, schedule, RNG),
the resolved configuration and the tokenizer, in one folder per step.

Layout under ``<out_dir>/checkpoints``::

    step_000500/
        model.safetensors      full (unsharded) weights, loadable without this package
        optimizer.pt           AdamW state keyed by parameter name (portable across DDP / FSDP2 / one process)
        trainer.pt             step, sequences consumed, learning rate, RNG states of every process
        config.yaml            the resolved training and model configuration
        tokenizer.json         the tokenizer
    latest                     the name of the newest complete checkpoint

A checkpoint is written to ``step_N.tmp`` and renamed when complete, and ``latest`` is replaced
atomically after that, so a run killed at any moment leaves the previous checkpoint intact.
The state dicts go through ``torch.distributed.checkpoint.state_dict``, which gathers FSDP2 shards into
full tensors on rank 0 when saving and scatters them again when loading.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from testtime.errors import UserError

__all__ = [
    "CheckpointFiles",
    "get_rng_state",
    "latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    "set_rng_state",
]


class CheckpointFiles:
    """File names inside a checkpoint folder."""

    model = "model.safetensors"
    optimizer = "optimizer.pt"
    trainer = "trainer.pt"
    config = "config.yaml"
    tokenizer = "tokenizer.json"


def get_rng_state() -> dict[str, Any]:
    """The state of every random generator this process uses (Python, NumPy, torch CPU and CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _options(*, cpu_offload: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)


def save_checkpoint(
    root: str | Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    config_yaml: str,
    tokenizer: Any,
    keep: int = 0,
) -> Path | None:
    """Save a checkpoint of ``step`` under ``root`` (collective: every process must call it).

    Args:
        root: the checkpoints folder.
        step: optimizer steps taken.
        model: the (possibly DDP- or FSDP2-wrapped) model.
        optimizer: its optimizer.
        trainer_state: picklable trainer state; ``rng`` is replaced by the list of every process's RNG state.
        config_yaml: the resolved configuration as YAML text.
        tokenizer: has ``save(path)``.
        keep: keep only the newest ``keep`` checkpoints (0: all).

    Returns:
        The checkpoint folder on rank 0, None on other ranks.
    """
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    options = _options(cpu_offload=True)  # full tensors, on rank 0 only
    weights = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)
    rng = get_rng_state()
    if dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, rng)
        is_main = dist.get_rank() == 0
    else:
        gathered, is_main = [rng], True
    out: Path | None = None
    if is_main:
        root = Path(root)
        final = root / f"step_{step:06d}"
        tmp = root / f"step_{step:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # clone: tied weights share storage, which safetensors refuses; each name gets its own copy
        save_file(
            {k: v.detach().contiguous().clone() for k, v in weights.items()}, str(tmp / CheckpointFiles.model)
        )
        torch.save(optim_state, tmp / CheckpointFiles.optimizer)
        torch.save({**trainer_state, "rng": gathered}, tmp / CheckpointFiles.trainer)
        (tmp / CheckpointFiles.config).write_text(config_yaml)
        tokenizer.save(tmp / CheckpointFiles.tokenizer)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        latest_tmp = root / "latest.tmp"
        latest_tmp.write_text(final.name + "\n")
        os.replace(latest_tmp, root / "latest")
        if keep > 0:
            done = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
            for old in done[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        out = final
    if dist.is_initialized():
        dist.barrier()
    return out


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder named by ``root/latest``, or None when there is none."""
    pointer = Path(root) / "latest"
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if (path / CheckpointFiles.trainer).is_file() else None


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The full weights of a checkpoint folder (or a ``.safetensors`` file) as CPU tensors."""
    from safetensors.torch import load_file

    path = Path(path)
    file = path / CheckpointFiles.model if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"no weights at {file}")
    return load_file(str(file))


def load_checkpoint(
    path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> dict[str, Any]:
    """Load weights (and optimizer state) into a possibly wrapped model; restore this process's RNG state.

    Args:
        path: a checkpoint folder.
        model: the model, already wrapped as when saved (any wrapping works: names are portable).
        optimizer: its optimizer, or None to load weights only.

    Returns:
        The trainer state saved with it (``rng`` removed).
    """
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    path = Path(path)
    options = _options(cpu_offload=False)
    set_model_state_dict(model, load_weights(path), options=options)
    state = torch.load(path / CheckpointFiles.trainer, weights_only=False)
    if optimizer is not None:
        optim_state = torch.load(path / CheckpointFiles.optimizer, weights_only=False)
        set_optimizer_state_dict(model, optimizer, optim_state, options=options)
    rngs = state.pop("rng")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if len(rngs) == (dist.get_world_size() if dist.is_initialized() else 1):
        set_rng_state(rngs[rank])
    return state
