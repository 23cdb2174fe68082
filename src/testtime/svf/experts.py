"""SVF experts on disk: the z vectors of one task, with what they were trained on and how well they did.

An expert is one safetensors file: a tensor per target module (its z vector) and, in the header's string
metadata, ``testtime_svf`` = a JSON object with the base model's name, the hash of the decomposed base
weights (:func:`testtime.svf.svf.weights_hash`), the targets and layers, the parameterization, the task and
the training metrics. Loading an expert onto an :class:`~testtime.svf.svf.SVF` whose base weights hash
differently is refused with a clear error (the vectors scale singular directions of one particular model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from testtime.errors import UserError
from testtime.svf.svf import SVF

__all__ = ["Expert", "expert_from_svf", "load_expert", "save_expert"]

FORMAT = "testtime-svf-expert/1"


@dataclass(kw_only=True)
class Expert:
    """The z vectors of one task plus their provenance.

    Attributes:
        vectors: per target module name, its z vector ``[r]`` (float32).
        base_model: the base model's name as the user gave it.
        weights_hash: hash of the base model's target weights.
        targets: target groups or names; layers: the adapted layer indices (None: all).
        parameterization: ``"raw"`` or ``"sigmoid"``.
        max_mult: the sigmoid form's scale.
        task: the task it was trained on (free text, e.g. ``"arc-easy"``).
        method: ``"reinforce"``, ``"ntp"`` (next-token prediction) or ``"cem"`` / ``"mixture"``.
        metrics: numbers from training (validation accuracy, steps, seconds...).
    """

    vectors: dict[str, torch.Tensor]
    base_model: str
    weights_hash: str
    targets: list[str]
    layers: list[int] | None
    parameterization: str
    max_mult: float = 1.0
    task: str = ""
    method: str = "reinforce"
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        """The number of scalars in the expert."""
        return sum(v.numel() for v in self.vectors.values())

    def multipliers(self) -> dict[str, torch.Tensor]:
        """Per target, ``m`` before renormalisation (raw: z; sigmoid: sigmoid(z) · max_mult)."""
        from testtime.svf.svf import multiplier

        return {
            n: multiplier(v, self.parameterization, max_mult=self.max_mult) for n, v in self.vectors.items()
        }  # type: ignore[arg-type]

    def metadata(self) -> dict[str, Any]:
        """Everything but the vectors, JSON-serialisable."""
        return {
            "format": FORMAT,
            "base_model": self.base_model,
            "weights_hash": self.weights_hash,
            "targets": list(self.targets),
            "layers": None if self.layers is None else list(self.layers),
            "parameterization": self.parameterization,
            "max_mult": self.max_mult,
            "task": self.task,
            "method": self.method,
            "metrics": self.metrics,
            "num_parameters": self.num_parameters,
        }

    def check_compatible(self, svf: SVF) -> None:
        """Raise a clear :class:`UserError` unless this expert fits ``svf``'s base model and targets."""
        if sorted(self.vectors) != sorted(svf.names):
            same_layers = (None if self.layers is None else list(self.layers)) == (
                None if svf.config.layers is None else list(svf.config.layers)
            )
            if list(self.targets) == list(svf.config.targets) and same_layers:
                raise UserError(
                    f"expert for task {self.task!r} was trained on another base model ({self.base_model!r}: "
                    f"{len(self.vectors)} target matrices, weights hash {self.weights_hash}); this model has "
                    f"{len(svf.names)} (weights hash {svf.weights_hash}): an SVF expert only applies to the "
                    "exact model it was trained on"
                )
            raise UserError(
                f"expert for task {self.task!r} adapts {len(self.vectors)} matrices, this SVF {len(svf.names)}: "
                f"use the same targets ({self.targets}) and layers ({self.layers or 'all'})"
            )
        if self.weights_hash != svf.weights_hash:
            raise UserError(
                f"expert for task {self.task!r} was trained on base model {self.base_model!r} (weights hash "
                f"{self.weights_hash}), but this model's target weights hash to {svf.weights_hash}: "
                "an SVF expert only applies to the exact model it was trained on"
            )
        if self.parameterization != svf.config.parameterization:
            raise UserError(
                f"expert uses the {self.parameterization} parameterization, this SVF "
                f"{svf.config.parameterization}"
            )

    def apply(self, svf: SVF) -> None:
        """Load the vectors into ``svf.z`` (after :meth:`check_compatible`)."""
        self.check_compatible(svf)
        svf.load_vectors(self.vectors)


def expert_from_svf(
    svf: SVF,
    *,
    base_model: str,
    task: str = "",
    method: str = "reinforce",
    metrics: dict[str, Any] | None = None,
) -> Expert:
    """An :class:`Expert` holding ``svf``'s current z vectors."""
    return Expert(
        vectors={n: v.float().cpu() for n, v in svf.vectors().items()},
        base_model=base_model,
        weights_hash=svf.weights_hash,
        targets=list(svf.config.targets),
        layers=None if svf.config.layers is None else list(svf.config.layers),
        parameterization=svf.config.parameterization,
        max_mult=svf.config.max_mult,
        task=task,
        method=method,
        metrics=dict(metrics or {}),
    )


def save_expert(expert: Expert, path: str | Path) -> Path:
    """Write ``expert`` to ``path`` (a ``.safetensors`` file; parent directories are created)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: v.detach().float().cpu().contiguous() for name, v in expert.vectors.items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"testtime_svf": json.dumps(expert.metadata())})
    tmp.replace(path)
    return path


def load_expert(path: str | Path) -> Expert:
    """Read an expert written by :func:`save_expert`.

    Raises:
        UserError: the file is missing, not safetensors, or not an SVF expert.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"expert file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            vectors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as exc:  # safetensors raises several error types for foreign files
        raise UserError(f"{path} is not a safetensors file: {exc}") from None
    if "testtime_svf" not in header:
        raise UserError(f"{path} is a safetensors file but not an SVF expert (no testtime_svf metadata)")
    try:
        meta = json.loads(header["testtime_svf"])
    except json.JSONDecodeError:
        raise UserError(f"{path} has unreadable SVF metadata") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: unknown expert format {meta.get('format')!r} (expected {FORMAT})")
    return Expert(
        vectors=vectors,
        base_model=str(meta["base_model"]),
        weights_hash=str(meta["weights_hash"]),
        targets=list(meta["targets"]),
        layers=meta.get("layers"),
        parameterization=str(meta["parameterization"]),
        max_mult=float(meta.get("max_mult", 1.0)),
        task=str(meta.get("task", "")),
        method=str(meta.get("method", "reinforce")),
        metrics=dict(meta.get("metrics", {})),
    )
