"""The model contract of the trainer, and the registry that maps a model name to its config and builder.

A trainable model is any ``torch.nn.Module`` with

* ``forward(input_ids, labels=None)``: ``input_ids`` and ``labels`` are ``(b, t)`` int64 (labels are the
  next tokens; ``-100`` is ignored). It returns an :class:`LMOutput` or a mapping/object with

  - ``loss``: scalar tensor, the training objective (with any auxiliary terms), required when labels are given;
  - ``logits``: ``(b, t, vocab)``, used for evaluation in bits per byte and for sampling;
  - ``metrics`` (optional): ``{name: scalar}``, averaged over micro-batches and logged as ``train/<name>``;

* optionally ``after_optimizer_step()``: called on the unwrapped module, on every process, right after each
  optimizer step (DeepSeek-V3's auxiliary-loss-free routing-bias update lives there);
* optionally ``max_seq_len`` (int attribute): sampling crops the context to it;
* optionally ``ddp_find_unused_parameters = True`` (attribute) when a forward pass can leave parameters
  without gradients (e.g. experts no token was routed to), which DDP must then look for;
* optionally ``fsdp_modules()`` returning the submodules FSDP2 shards one by one (default: the children of
  the first ``nn.ModuleList``; ``[]``: the root only, for models that read a block's parameters outside
  that block's ``forward``).

A model family registers itself with :func:`register_model`: a name, a ``@dataclass(kw_only=True)`` config
class, named presets of that config, and ``build(config, vocab_size) -> nn.Module``. The trainer then
builds ``--model NAME --preset PRESET`` with ``model_config`` overrides. Models of other packages
(``titans-*``, ``deepseek-*``) are found by importing the modules in :data:`MODEL_MODULES` on first lookup.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from testtime.errors import UserError
from testtime.nn.output import LMOutput  # re-exported: the model contract's output type

__all__ = [
    "MODEL_MODULES",
    "LMOutput",
    "ModelSpec",
    "build_model",
    "get_model_spec",
    "list_models",
    "output_field",
    "register_model",
    "resolve_model_config",
]

# Modules imported on first lookup so that their register_model calls run (missing ones are skipped).
MODEL_MODULES: tuple[str, ...] = (
    "testtime.train.transformer",
    "testtime.titans.train",
    "testtime.titans",
    "testtime.deepseek.train",
    "testtime.deepseek",
)


def output_field(output: Any, name: str) -> Any:
    """``output[name]`` for mappings, ``getattr(output, name, None)`` otherwise."""
    if isinstance(output, Mapping):
        return output.get(name)
    return getattr(output, name, None)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model family.

    Attributes:
        name: the registry key (``--model``).
        config_cls: a ``@dataclass(kw_only=True)`` whose fields are the model's hyperparameters.
        build: ``(config, vocab_size) -> nn.Module`` following the contract in the module docstring.
        presets: named zero-argument constructors of ``config_cls``.
        default_preset: the preset used when none is named.
        description: one line for ``testtime lm models``.
    """

    name: str
    config_cls: type
    build: Callable[[Any, int], nn.Module]
    presets: Mapping[str, Callable[[], Any]]
    default_preset: str
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}
_imported = False


def register_model(
    name: str,
    *,
    config_cls: type,
    build: Callable[[Any, int], nn.Module],
    presets: Mapping[str, Callable[[], Any]],
    default_preset: str | None = None,
    description: str = "",
) -> ModelSpec:
    """Add a model family to the registry (re-registering a name replaces it).

    Args:
        name: the registry key, e.g. ``"transformer"``, ``"titans-mac"``, ``"deepseek-v3"``.
        config_cls: the config dataclass.
        build: ``(config, vocab_size) -> nn.Module``.
        presets: at least one named preset, e.g. ``{"tiny": Config.tiny}``.
        default_preset: the preset used by default (the first one if None).
        description: a one-line summary.

    Returns:
        The spec.

    Raises:
        ValueError: the config is not a dataclass, there is no preset, or the default is not one of them.
    """
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise ValueError(f"model {name!r}: config_cls must be a dataclass class, got {config_cls!r}")
    if not presets:
        raise ValueError(f"model {name!r} needs at least one preset")
    default = default_preset or next(iter(presets))
    if default not in presets:
        raise ValueError(f"model {name!r}: default preset {default!r} is not among {list(presets)}")
    spec = ModelSpec(name, config_cls, build, dict(presets), default, description)
    _REGISTRY[name] = spec
    return spec


def _import_model_modules() -> None:
    global _imported
    if _imported:
        return
    _imported = True
    for module in MODEL_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise


def list_models() -> list[ModelSpec]:
    """All registered model families, sorted by name."""
    _import_model_modules()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_model_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``; UserError naming the known ones otherwise."""
    if name not in _REGISTRY:
        _import_model_modules()
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY)) or 'none'}")
    return _REGISTRY[name]


def resolve_model_config(spec: ModelSpec, preset: str | None, overrides: Mapping[str, Any]) -> Any:
    """The preset's config with ``overrides`` applied field by field.

    Raises:
        UserError: unknown preset or field, or a config that rejects the values.
    """
    preset = preset or spec.default_preset
    if preset not in spec.presets:
        raise UserError(f"model {spec.name!r} has no preset {preset!r}; presets: {', '.join(spec.presets)}")
    config = spec.presets[preset]()
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserError(f"unknown {spec.name} config field(s) {unknown}; fields: {', '.join(sorted(names))}")
    try:
        values = {name: _nested(config, name, value) for name, value in overrides.items()}
        return dataclasses.replace(config, **values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"bad {spec.name} config: {exc}") from exc


def _nested(config: Any, name: str, value: Any) -> Any:
    """A mapping given for a dataclass-typed field (as a saved config.yaml holds it) becomes that dataclass."""
    if not isinstance(value, Mapping):
        return value
    current = getattr(config, name)
    if dataclasses.is_dataclass(current) and not isinstance(current, type):
        return dataclasses.replace(current, **value)
    try:
        hint = typing.get_type_hints(type(config)).get(name)
    except NameError:  # an annotation that cannot be resolved: leave the mapping as it is
        return value
    for option in (hint, *typing.get_args(hint)):
        if isinstance(option, type) and dataclasses.is_dataclass(option):
            return option(**value)
    return value


def build_model(spec: ModelSpec, config: Any, *, vocab_size: int) -> nn.Module:
    """Build the model; a config the builder rejects becomes a UserError."""
    try:
        return spec.build(config, vocab_size)
    except ValueError as exc:
        raise UserError(f"cannot build {spec.name}: {exc}") from exc
