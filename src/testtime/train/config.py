"""The training configuration: one flat dataclass, filled from defaults < a YAML/JSON file < flags.

Everything is checked by :func:`validate` before any data is read or model built, so a bad value fails
in a second with a message that names the field.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testtime.errors import UserError

__all__ = [
    "ALIASES",
    "LOGGERS",
    "TrainConfig",
    "family_command",
    "load_config",
    "parse_overrides",
    "validate",
]

LOGGERS = ("jsonl", "tensorboard", "wandb", "trackio")

# Flag names (docs/cli.md) accepted as configuration keys, in config files and in --set.
ALIASES = {"out": "out_dir", "threads": "num_threads", "logger": "loggers"}


def family_command(model: str) -> str:
    """The command group that trains ``model``: ``lm`` for the baseline, else the name's first part."""
    family = model.split("-")[0]
    return family if family in ("titans", "deepseek") else "lm"


def canonical_key(key: str) -> str:
    """``max-steps`` -> ``max_steps``; flag aliases (``out``, ``threads``, ``logger``) -> the field name."""
    key = key.replace("-", "_")
    return ALIASES.get(key, key)


def _unknown_key_message(unknown: list[str], known: list[str]) -> str:
    import difflib

    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known + list(ALIASES), n=1, cutoff=0.5)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"unknown training option {', '.join(parts)}; options: {', '.join(known)}"


@dataclass(kw_only=True)
class TrainConfig:
    """A training run. Defaults train the Transformer++ baseline on tinyshakespeare bytes in a few minutes."""

    # model
    model: str = "transformer"  # registry name (`testtime lm models` lists them)
    preset: str | None = None  # the model's named preset (None: the model's default preset)
    model_config: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's fields

    # data
    corpus: list[str] = field(
        default_factory=lambda: ["shakespeare"]
    )  # shakespeare, stdlib, file or folder paths
    max_corpus_bytes: int | None = None  # use only the first documents up to this many bytes (None: all)
    tokenizer: str = "byte"  # byte, bpe (trained on the training split), or a tokenizer.json path
    bpe_vocab_size: int = 2048  # vocabulary size when training a BPE
    val_fraction: float = 0.1  # share of documents held out for evaluation
    seq_len: int = 128  # tokens per training sequence

    # batch: batch_size sequences per optimizer step = micro_batch_size x processes x accumulation steps
    batch_size: int = 16  # sequences per optimizer step, over all processes and accumulation steps
    micro_batch_size: int | None = (
        None  # sequences per forward pass per process (None: batch_size / processes)
    )

    # optimisation: AdamW, linear warmup then cosine decay to min_lr_ratio * lr
    max_steps: int = 600  # optimizer steps
    lr: float = 2e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # final learning rate as a fraction of lr
    warmup_steps: int = 30  # linear warmup steps (a run shorter than this is all warmup)
    weight_decay: float = 0.1  # AdamW decoupled weight decay, on parameters with >= 2 dimensions
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # clip the global gradient norm to this (0: no clipping)

    # evaluation and checkpoints
    eval_every: int = 100  # evaluate bits per byte every N steps and at the end (0: only at the end)
    eval_sequences: int = 64  # validation sequences per evaluation (fixed, the first ones of the split)
    ckpt_every: int = 200  # save a checkpoint every N steps and at the end (0: only at the end)
    keep_checkpoints: int = 2  # keep the newest N checkpoints (0: keep all)
    out_dir: str = "runs/lm"  # where checkpoints, tokenizer and logs go
    resume: str = "auto"  # auto (latest checkpoint in out_dir if any), never, or a checkpoint folder

    # logging
    loggers: list[str] = field(
        default_factory=list
    )  # any of jsonl, tensorboard, wandb, trackio (none: no-op)
    log_every: int = 10  # log training metrics every N steps
    project: str = "testtime"  # wandb / trackio project
    run_name: str | None = None  # run name for wandb / trackio (None: the out_dir name)
    progress: bool = True  # show a tqdm progress bar

    # system
    seed: int = 1337  # seeds model init, data order and every RNG
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    dtype: str = "float32"  # float32, or bfloat16 autocast
    parallel: str = "ddp"  # ddp or fsdp (FSDP2 fully_shard), used under torchrun with > 1 process
    compile: bool = False  # torch.compile the model
    num_threads: int | None = None  # torch CPU threads per process (None: torch's default)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is Any:
        return True
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def config_from_dict(data: Mapping[str, Any], *, base: TrainConfig | None = None) -> TrainConfig:
    """Apply ``data`` (field -> value) on top of ``base`` (default: the defaults), checking names and types.

    ``model_config`` is merged key by key; a string for a list field becomes a one-element list.
    """
    base = base or TrainConfig()
    hints = _field_types()
    data = {canonical_key(k): v for k, v in data.items()}
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise UserError(_unknown_key_message(unknown, sorted(hints)))
    values: dict[str, Any] = {}
    for name, value in data.items():
        if typing.get_origin(hints[name]) is list and isinstance(value, str):
            value = [value]
        if not _matches(value, hints[name]):
            raise UserError(f"option {name}: expected {hints[name]}, got {value!r}")
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and float in typing.get_args(hints[name]) + (hints[name],)
        ):
            value = float(value)  # an integer written for a float option
        values[name] = value
    if "model_config" in values:
        values["model_config"] = {**base.model_config, **values["model_config"]}
    return dataclasses.replace(base, **values)


def load_config(path: str | Path, *, base: TrainConfig | None = None) -> TrainConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON file of training options."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # both parsers raise their own error types
        raise UserError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of option names to values")
    return config_from_dict(data, base=base)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=3e-4", "model_config.dim=128"]`` -> ``{"lr": 3e-4, "model_config": {"dim": 128}}`` (YAML values)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise UserError(f"--set {item!r}: {exc}") from exc
        if isinstance(value, str) and value.lower() in ("none", "null"):
            value = None
        if key.startswith("model_config."):
            out.setdefault("model_config", {})[key.removeprefix("model_config.")] = value
        else:
            out[key] = value
    return out


def validate(cfg: TrainConfig, *, world_size: int = 1) -> None:
    """Check every value that can be checked without reading data; UserError for the first bad one."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UserError(message)

    import math

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float):
            need(math.isfinite(value), f"{f.name} must be a finite number, got {value}")
        if isinstance(value, int) and not isinstance(value, bool):
            need(abs(value) < 2**53, f"{f.name} is too large: {value}")
    need(0 <= cfg.seed < 2**32, f"seed must be in 0..2**32-1, got {cfg.seed}")
    positive = ("seq_len", "batch_size", "max_steps", "eval_sequences", "log_every", "bpe_vocab_size")
    for name in positive:
        need(getattr(cfg, name) >= 1, f"{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("warmup_steps", "eval_every", "ckpt_every", "keep_checkpoints", "weight_decay", "grad_clip"):
        need(getattr(cfg, name) >= 0, f"{name} must be >= 0, got {getattr(cfg, name)}")
    need(cfg.lr > 0, f"lr must be positive, got {cfg.lr}")
    need(0.0 <= cfg.min_lr_ratio <= 1.0, f"min_lr_ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    need(0.0 <= cfg.beta1 < 1.0 and 0.0 <= cfg.beta2 < 1.0, "beta1 and beta2 must be in [0, 1)")
    need(0.0 <= cfg.val_fraction < 1.0, f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    need(cfg.num_threads is None or cfg.num_threads >= 1, f"num_threads must be >= 1, got {cfg.num_threads}")
    need(cfg.max_corpus_bytes is None or cfg.max_corpus_bytes > 0, "max_corpus_bytes must be positive")
    need(bool(cfg.corpus), "corpus is empty: name shakespeare, stdlib or text files")
    micro = cfg.micro_batch_size or cfg.batch_size // world_size
    need(micro >= 1, f"batch_size {cfg.batch_size} is smaller than the {world_size} processes")
    need(
        cfg.batch_size % (micro * world_size) == 0,
        f"batch_size {cfg.batch_size} must be a multiple of micro_batch_size {micro} x {world_size} process(es)",
    )
    if cfg.tokenizer not in ("byte", "bpe"):
        need(
            Path(cfg.tokenizer).is_file(),
            f"tokenizer must be byte, bpe or a tokenizer.json path: {cfg.tokenizer}",
        )
    from testtime.train.data import CORPORA

    for source in cfg.corpus:
        need(
            source in CORPORA or Path(source).expanduser().exists(),
            f"corpus {source!r}: no such corpus or path",
        )
    bad = [name for name in cfg.loggers if name not in LOGGERS]
    need(not bad, f"unknown logger(s) {bad}; choose from {', '.join(LOGGERS)}")
    need(cfg.dtype in ("float32", "bfloat16"), f"dtype must be float32 or bfloat16, got {cfg.dtype}")
    need(cfg.parallel in ("ddp", "fsdp"), f"parallel must be ddp or fsdp, got {cfg.parallel}")
    need(
        cfg.device in ("auto", "cpu") or cfg.device.startswith("cuda"),
        f"device must be auto, cpu, cuda or cuda:N, got {cfg.device}",
    )
    if cfg.device.startswith("cuda"):
        import torch

        need(torch.cuda.is_available(), f"device {cfg.device} requested but CUDA is not available")
    need(
        cfg.resume in ("auto", "never") or Path(cfg.resume).is_dir(),
        f"resume: no checkpoint folder {cfg.resume}",
    )
    from testtime.train.registry import get_model_spec, resolve_model_config

    resolve_model_config(get_model_spec(cfg.model), cfg.preset, cfg.model_config)
