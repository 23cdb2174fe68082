"""What a training configuration will do, known before anything is allocated: the resolved model (preset
expanded), its parameter count, the memory it needs, and warnings about contradictions.

The parameter count comes from building the model on PyTorch's ``meta`` device (shapes without storage),
so a 16B-parameter preset is described in a second without allocating it. The memory estimate is the
usual mixed-precision-free AdamW budget: fp32 weights (4 bytes/parameter) + gradients (4) + AdamW's two
moments (8) = 16 bytes per parameter, plus the activations of one micro-batch, approximated as
``34 * micro_batch * seq_len * dim`` bytes per layer (the fp32 activation count of a Transformer block
without recomputation, after Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", eq. 1, at 4 bytes instead of their 2). It is an estimate, written as such.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testtime.train.config import TrainConfig

__all__ = ["Plan", "machine_memory_bytes", "plan", "resolved_dict"]

BYTES_PER_PARAM = 16  # fp32 weights + gradients + AdamW first and second moments


@dataclass
class Plan:
    """A run described before it starts.

    Attributes:
        model_config: the model's resolved configuration (preset expanded, overrides applied).
        preset: the preset name used.
        vocab_size: the tokenizer's vocabulary size (None when it depends on data not yet seen).
        num_params: unique trainable parameters (None if the model could not be built on ``meta``).
        memory_bytes: estimated training memory of one process.
        available_bytes: memory of the device the run will use (None when unknown).
        warnings: contradictions and risks, one sentence each.
    """

    model_config: Any
    preset: str
    vocab_size: int | None
    num_params: int | None
    memory_bytes: int | None
    available_bytes: int | None
    warnings: list[str] = field(default_factory=list)

    @property
    def too_large(self) -> bool:
        """Whether the estimate exceeds the device's memory."""
        return (
            None not in (self.memory_bytes, self.available_bytes) and self.memory_bytes > self.available_bytes
        )  # type: ignore[operator]


def machine_memory_bytes(device: str = "cpu") -> int | None:
    """Total memory of ``device``: physical RAM for cpu/auto without CUDA, the GPU's memory for cuda."""
    if device.startswith("cuda") or device == "auto":
        import torch

        if torch.cuda.is_available():
            index = int(device.split(":")[1]) if ":" in device else 0
            return int(torch.cuda.get_device_properties(index).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _vocab_size(cfg: TrainConfig) -> int | None:
    if cfg.tokenizer == "byte":
        return 257
    if cfg.tokenizer == "bpe":
        return cfg.bpe_vocab_size
    try:
        return len(json.loads(Path(cfg.tokenizer).read_text())["model"]["vocab"]) + 1
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _count_on_meta(spec: Any, model_config: Any, vocab_size: int) -> int | None:
    import torch

    from testtime.train.registry import build_model

    try:
        with torch.device("meta"):
            model = build_model(spec, model_config, vocab_size=vocab_size)
    except Exception:  # a builder that needs real storage: no count rather than an allocation
        return None
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def plan(cfg: TrainConfig, *, world_size: int = 1) -> Plan:
    """Describe ``cfg`` (already validated) without reading data or allocating the model."""
    from testtime.train.registry import get_model_spec, resolve_model_config

    spec = get_model_spec(cfg.model)
    preset = cfg.preset or spec.default_preset
    model_config = resolve_model_config(spec, preset, cfg.model_config)
    vocab = _vocab_size(cfg)
    num_params = _count_on_meta(spec, model_config, vocab or 257)
    micro = cfg.micro_batch_size or max(1, cfg.batch_size // world_size)
    memory = None
    if num_params is not None:
        width = int(getattr(model_config, "dim", getattr(model_config, "hidden_size", 0)) or 0)
        layers = int(getattr(model_config, "num_layers", getattr(model_config, "num_hidden_layers", 0)) or 0)
        activations = 34 * micro * cfg.seq_len * width * layers * 4 // 2
        logits = micro * cfg.seq_len * (vocab or 257) * 4 * 3  # logits, their softmax and its gradient
        memory = num_params * BYTES_PER_PARAM + activations + logits
    available = machine_memory_bytes(cfg.device)
    out = Plan(
        model_config=model_config,
        preset=preset,
        vocab_size=vocab,
        num_params=num_params,
        memory_bytes=memory,
        available_bytes=available,
    )
    if cfg.warmup_steps >= cfg.max_steps:
        out.warnings.append(
            f"warmup_steps {cfg.warmup_steps} >= max_steps {cfg.max_steps}: the whole run is warm-up and the "
            "learning rate never reaches its cosine decay (lower --warmup-steps)"
        )
    max_len = getattr(model_config, "max_seq_len", None)
    if isinstance(max_len, int) and cfg.seq_len > max_len:
        out.warnings.append(
            f"seq_len {cfg.seq_len} > the model's max_seq_len {max_len}: sampling will crop to {max_len}"
        )
    if out.too_large:
        out.warnings.append(
            f"the model needs about {_gb(memory)} to train ({num_params / 1e9:.2f}B parameters x "  # type: ignore[operator]
            f"{BYTES_PER_PARAM} bytes + activations) but this machine has {_gb(available)}"
        )
    return out


def _gb(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.2f} GiB"


def resolved_dict(cfg: TrainConfig, p: Plan) -> dict[str, Any]:
    """The configuration as ``--dry-run`` prints it: the preset named, the model fields expanded."""
    data = dataclasses.asdict(cfg)
    data["preset"] = p.preset
    data["model_config"] = dataclasses.asdict(p.model_config)
    return json.loads(json.dumps(data, default=str))  # tuples -> lists, anything exotic -> its str


def summary_lines(p: Plan) -> list[str]:
    """Human lines (YAML comments in ``--dry-run``): parameters, memory, warnings."""
    lines = []
    if p.num_params is not None:
        lines.append(f"parameters: {p.num_params:,} ({p.num_params / 1e6:.2f}M)")
    if p.memory_bytes is not None:
        lines.append(
            f"estimated training memory: {_gb(p.memory_bytes)} per process "
            f"(16 bytes/parameter + activations); this machine: {_gb(p.available_bytes)}"
        )
    lines += [f"warning: {w}" for w in p.warnings]
    return lines
