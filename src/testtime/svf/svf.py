"""Singular value fine-tuning (SVF, Transformer² section 3.1): ``W' = U diag(s ⊙ z) Vᵀ``, one vector z per matrix.

Every target weight ``W`` (``[out, in]``) is decomposed once, ``W = U diag(s) Vᵀ`` (thin SVD, float32 by
default, cached as safetensors under ``<testtime cache>/svf/<hash>.safetensors`` keyed by a hash of the
target weights), and only one vector per matrix is trained: a multiplier on each singular value.

Two parameterizations (``SVFConfig.parameterization``):

- ``"raw"`` (the paper's eq. for SVF): the trained vector *is* the multiplier, ``m = z``; ``z = 1`` is the
  base model.
- ``"sigmoid"`` (the official code): the trained vector ``p`` goes through ``m = sigmoid(p) · max_mult``
  and the matrix is renormalised so that its nuclear norm (sum of singular values) is unchanged:
  ``W' = U diag(s ⊙ m) Vᵀ · Σs / Σ(s ⊙ m)``. Any constant ``p`` gives ``W' = W`` exactly, and ``max_mult``
  cancels in the renormalisation (it is kept for completeness). The official code initialises ``p`` at
  0.1 plus N(0, 0.01²) noise; here the noise is optional (``init_noise``), default off, so that a fresh
  SVF is the base model exactly.

Expert mixtures (adaptation strategy C) combine experts in multiplier space, ``m' = Σ_k α_k m_k``, then
renormalise when the experts use the sigmoid form, as the official code does.

Two ways to run the adapted model:

- **factored** (training): each target ``nn.Linear`` is swapped for :class:`SVFLinear`, which computes
  ``y = U (s ⊙ f ⊙ (Vᵀ x)) + b`` (``f`` the effective multiplier), so the gradient reaches z without
  building ``W'``;
- **merged** (sampling): ``W' = W + U diag(s ⊙ (f - 1)) Vᵀ`` is written into the original weights, so the
  engine's lean path samples from plain ``nn.Linear`` modules. Writing ``W + Δ`` (rather than
  ``U diag(s f) Vᵀ``) keeps the identity exact (``f = 1`` gives ``Δ = 0``) despite float32 SVD rounding.

Shapes: ``W [o, i]``, ``U [o, r]``, ``s [r]``, ``Vh = Vᵀ [r, i]``, ``r = min(o, i)``; ``x [..., i]``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from testtime.errors import UserError

__all__ = [
    "Decomposition",
    "SVF",
    "SVFConfig",
    "SVFLinear",
    "combine_multipliers",
    "compose_weight",
    "decompose",
    "effective_multiplier",
    "factored_linear",
    "multiplier",
    "notify_weights_changed",
    "select_targets",
    "svd",
    "weights_hash",
]

Parameterization = Literal["raw", "sigmoid"]
TARGET_GROUPS = ("mlp", "attn", "all")
_LAYER_INDEX = re.compile(r"\.(\d+)\.")


# ---------------------------------------------------------------------------------------------- pure math


def svd(weight: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """Thin SVD of one weight matrix in ``dtype``: ``W = U diag(s) Vh``.

    Args:
        weight: ``[o, i]``.
        dtype: computation and result dtype (float32 as the paper; float64 for equivalence tests).

    Returns:
        ``(U [o, r], s [r], Vh [r, i])`` with ``r = min(o, i)`` and ``s`` descending.
    """
    u, s, vh = torch.linalg.svd(weight.detach().to(dtype), full_matrices=False)
    return u.contiguous(), s.contiguous(), vh.contiguous()


def multiplier(z: torch.Tensor, parameterization: Parameterization, *, max_mult: float = 1.0) -> torch.Tensor:
    """The per-singular-value multiplier ``m`` before renormalisation.

    ``raw``: ``m = z`` (the paper). ``sigmoid``: ``m = sigmoid(z) · max_mult`` (the official code).
    """
    if parameterization == "raw":
        return z
    if parameterization == "sigmoid":
        return torch.sigmoid(z) * max_mult
    raise ValueError(f"parameterization must be 'raw' or 'sigmoid', not {parameterization!r}")


def effective_multiplier(
    m: torch.Tensor, s: torch.Tensor, parameterization: Parameterization
) -> torch.Tensor:
    """The multiplier applied to ``s``: ``m`` (raw) or ``m · Σs / Σ(s ⊙ m)`` (sigmoid: nuclear norm kept).

    Args:
        m: ``[r]`` multiplier (see :func:`multiplier` and :func:`combine_multipliers`).
        s: ``[r]`` singular values.
        parameterization: ``"raw"`` or ``"sigmoid"``.

    Returns:
        ``f [r]`` such that ``W' = U diag(s ⊙ f) Vh``.
    """
    if parameterization == "raw":
        return m
    return m * (s.sum() / (s * m).sum())


def compose_weight(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``W' = U diag(s ⊙ f) Vh`` (the merged weight): ``[o, r] [r] [r, i] [r] -> [o, i]``."""
    return (u * (s * f)) @ vh


def factored_linear(
    x: torch.Tensor,
    u: torch.Tensor,
    s: torch.Tensor,
    vh: torch.Tensor,
    f: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y = U (s ⊙ f ⊙ (Vh x)) + b`` without building ``W'``: ``x [..., i] -> y [..., o]``."""
    y = ((x @ vh.T) * (s * f)) @ u.T
    return y if bias is None else y + bias


def combine_multipliers(multipliers: Sequence[torch.Tensor], alphas: torch.Tensor) -> torch.Tensor:
    """Strategy C's mixture ``m' = Σ_k α_k m_k`` of K experts' multipliers for one matrix: ``[K, r] -> [r]``."""
    return torch.einsum("k,kr->r", alphas.to(multipliers[0].dtype), torch.stack(list(multipliers)))


# ---------------------------------------------------------------------------------------------- targets


def _layer_of(name: str) -> int | None:
    match = _LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None


def _group_of(name: str) -> str | None:
    parts = name.lower().split(".")
    if any(p in ("mlp", "feed_forward", "ffn") or p.startswith("mlp") for p in parts):
        return "mlp"
    if any("attn" in p or "attention" in p for p in parts):
        return "attn"
    return None


def select_targets(
    model: nn.Module, *, targets: Sequence[str] = ("mlp",), layers: Sequence[int] | range | None = None
) -> list[str]:
    """Names of the ``nn.Linear`` modules SVF adapts.

    Args:
        model: a transformers causal LM.
        targets: groups ``"mlp"`` (default, as the paper), ``"attn"``, ``"all"``, and/or module leaf names
            (``"q_proj"``, ``"down_proj"``); a module matching any entry is a target.
        layers: decoder layer indices to adapt (None: all).

    Raises:
        UserError: nothing matches.
    """
    if not targets:
        raise UserError("targets must name at least one group (mlp, attn, all) or module (q_proj, ...)")
    wanted_layers = None if layers is None else {int(i) for i in layers}
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        layer = _layer_of(name)
        if layer is None:
            continue  # the LM head and embeddings are not SVF targets
        if wanted_layers is not None and layer not in wanted_layers:
            continue
        group, leaf = _group_of(name), name.rsplit(".", 1)[-1]
        if any(t == "all" or t in (group, leaf) for t in targets):
            names.append(name)
    if not names:
        raise UserError(
            f"no linear layer matches targets {list(targets)} and layers "
            f"{'all' if layers is None else sorted(wanted_layers or [])}; use mlp, attn, all or module names "
            "such as q_proj, down_proj"
        )
    return names


def parse_layers(text: str | None, num_layers: int) -> list[int] | None:
    """``"0-3,8"`` -> ``[0, 1, 2, 3, 8]`` (None or ``"all"``: every layer); a clear error for bad text."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                chosen = range(lo, hi + 1)
            else:
                chosen = range(int(part), int(part) + 1)
        except ValueError:
            raise UserError(f"layers must look like '0-3,8', got {text!r}") from None
        if not chosen or chosen.start < 0 or chosen.stop > num_layers:
            raise UserError(f"layer range {part!r} is outside 0-{num_layers - 1}")
        out.update(chosen)
    return sorted(out)


# ---------------------------------------------------------------------------------------------- decomposition


def weights_hash(model: nn.Module, names: Sequence[str]) -> str:
    """A SHA-256 (first 16 hex digits) of the target weights' names, shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    modules = dict(model.named_modules())
    for name in names:
        weight = modules[name].weight.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(weight.shape)}|{weight.dtype}|".encode())
        digest.update(weight.view(torch.uint8).numpy().tobytes() if weight.numel() else b"")
    return digest.hexdigest()[:16]


@dataclass(kw_only=True)
class Decomposition:
    """The SVD of every target matrix.

    Attributes:
        names: target module names, in model order.
        u, s, vh: per name, ``U [o, r]``, ``s [r]``, ``Vh [r, i]``.
        weights_hash: :func:`weights_hash` of the decomposed weights (identifies the base model).
    """

    names: list[str]
    u: dict[str, torch.Tensor]
    s: dict[str, torch.Tensor]
    vh: dict[str, torch.Tensor]
    weights_hash: str

    def to(self, device: torch.device | str) -> Decomposition:
        """A copy on ``device``."""
        return Decomposition(
            names=list(self.names),
            u={n: t.to(device) for n, t in self.u.items()},
            s={n: t.to(device) for n, t in self.s.items()},
            vh={n: t.to(device) for n, t in self.vh.items()},
            weights_hash=self.weights_hash,
        )


def _cache_file(digest: str, dtype: torch.dtype) -> Path:
    from testtime.llm.loading import cache_root

    return cache_root() / "svf" / f"{digest}-{str(dtype).removeprefix('torch.')}.safetensors"


def decompose(
    model: nn.Module,
    names: Sequence[str],
    *,
    dtype: torch.dtype = torch.float32,
    cache: bool = True,
    progress: bool = False,
) -> Decomposition:
    """SVD of every target weight, read from or written to the cache (keyed by :func:`weights_hash`).

    Args:
        model: the base model (its current weights are decomposed).
        names: target module names (see :func:`select_targets`).
        dtype: SVD dtype (float32 as the paper's code; float64 in tests).
        cache: read and write ``<cache>/svf/<hash>-<dtype>.safetensors``.
        progress: a tqdm bar while decomposing.
    """
    from safetensors.torch import load_file, save_file

    names = list(names)
    digest = weights_hash(model, names)
    path = _cache_file(digest, dtype)
    if cache and path.is_file():
        tensors = load_file(str(path))
        if all(f"{n}.U" in tensors for n in names):
            return Decomposition(
                names=names,
                u={n: tensors[f"{n}.U"] for n in names},
                s={n: tensors[f"{n}.S"] for n in names},
                vh={n: tensors[f"{n}.Vh"] for n in names},
                weights_hash=digest,
            )
    modules = dict(model.named_modules())
    u, s, vh = {}, {}, {}
    iterator: Any = names
    if progress:
        from tqdm import tqdm

        iterator = tqdm(names, desc="SVD", unit="matrix")
    for name in iterator:
        u[name], s[name], vh[name] = svd(modules[name].weight.cpu(), dtype=dtype)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tensors = {f"{n}.{k}": t[n] for n in names for k, t in (("U", u), ("S", s), ("Vh", vh))}
        save_file(tensors, str(tmp), metadata={"weights_hash": digest})
        tmp.replace(path)
    device = next(iter(modules[names[0]].parameters())).device
    return Decomposition(names=names, u=u, s=s, vh=vh, weights_hash=digest).to(device)


# ---------------------------------------------------------------------------------------------- modules


def notify_weights_changed(llm: Any) -> None:
    """Tell an LLM backend (or engine) that weights were changed in place (the LLM layer's contract).

    Uses ``llm.weights_changed()`` when present, else ``llm.engine.refresh_weights()`` / ``llm.refresh_weights()``.
    """
    if llm is None:
        return
    for target in (llm, getattr(llm, "engine", None)):
        if target is None:
            continue
        for method in ("weights_changed", "refresh_weights"):
            fn = getattr(target, method, None)
            if callable(fn):
                fn()
                return


class SVFLinear(nn.Module):
    """The factored forward ``y = U (s ⊙ f ⊙ (Vh x)) + b`` of one adapted ``nn.Linear``.

    It reads the multiplier from its owner :class:`SVF` at each call, so the gradient flows to z.
    """

    def __init__(self, owner: SVF, name: str, base: nn.Linear) -> None:
        super().__init__()
        self.name = name
        self.base = base  # kept for the bias and to be put back
        self._owner = [owner]  # a list: not registered as a submodule (no cycle in state_dict)
        self.in_features, self.out_features = base.in_features, base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = self._owner[0]
        if owner._identity:  # the base model (reference passes): the original weight, one matmul
            return F.linear(x, owner._base_weights[self.name], self.base.bias)
        dec = owner.decomposition
        f = owner.effective(self.name)
        u, s, vh = dec.u[self.name], dec.s[self.name], dec.vh[self.name]
        y = factored_linear(x.to(u.dtype), u, s, vh, f.to(u.dtype), None).to(x.dtype)
        return y if self.base.bias is None else y + self.base.bias


@dataclass(kw_only=True)
class SVFConfig:
    """What SVF adapts and how.

    Attributes:
        targets: module groups or names (``mlp``: the paper's default; ``attn``; ``all``; ``q_proj``...).
        layers: decoder layer indices (None: all).
        parameterization: ``"raw"`` (paper: m = z, init 1) or ``"sigmoid"`` (official code: m = sigmoid(p),
            nuclear norm kept, init ``init_value``).
        init_value: initial z (None: 1.0 for raw, 0.1 for sigmoid as the official code).
        init_noise: standard deviation of Gaussian noise added at init (official code: 0.01; default 0 so
            a fresh SVF is exactly the base model).
        max_mult: the sigmoid form's scale (cancels in its renormalisation).
        dtype: SVD dtype.
        cache: cache the decomposition.
    """

    targets: tuple[str, ...] = ("mlp",)
    layers: tuple[int, ...] | None = None
    parameterization: Parameterization = "raw"
    init_value: float | None = None
    init_noise: float = 0.0
    max_mult: float = 1.0
    dtype: torch.dtype = torch.float32
    cache: bool = True

    def __post_init__(self) -> None:
        if self.parameterization not in ("raw", "sigmoid"):
            raise UserError(f"parameterization must be raw or sigmoid, not {self.parameterization!r}")
        if self.init_noise < 0:
            raise UserError("init_noise must be >= 0")
        if self.max_mult <= 0:
            raise UserError("max_mult must be > 0")
        self.targets = tuple(self.targets)
        if self.layers is not None:
            self.layers = tuple(int(i) for i in self.layers)

    @property
    def identity_value(self) -> float:
        """The initial z (the base model for raw z = 1; any constant for the sigmoid form)."""
        if self.init_value is not None:
            return self.init_value
        return 1.0 if self.parameterization == "raw" else 0.1


class SVF(nn.Module):
    """SVF over a causal LM: one trainable vector z per target matrix, a factored and a merged forward.

    Args:
        model: the base transformers causal LM (modified in place by :meth:`merge` / :meth:`factored`).
        config: what to adapt and how.
        progress: a progress bar while decomposing.

    Attributes:
        names: the target module names.
        z: the trainable vectors (``z[key(name)]``, ``[r]`` each).
        decomposition: the SVD of the targets.
    """

    def __init__(self, model: nn.Module, config: SVFConfig | None = None, *, progress: bool = False) -> None:
        super().__init__()
        self.config = config or SVFConfig()
        self._model = [model]  # not a submodule
        self.names = select_targets(model, targets=self.config.targets, layers=self.config.layers)
        self.decomposition = decompose(
            model, self.names, dtype=self.config.dtype, cache=self.config.cache, progress=progress
        )
        self._modules_by_name = {n: m for n, m in model.named_modules() if n in set(self.names)}
        # The original weights, to merge ``W + Δ`` exactly and to restore.
        self._base_weights = {n: m.weight.detach().clone() for n, m in self._modules_by_name.items()}
        generator = torch.Generator().manual_seed(0)
        self.z = nn.ParameterDict()
        for name in self.names:
            rank = self.decomposition.s[name].numel()
            init = torch.full((rank,), self.config.identity_value, dtype=self.config.dtype)
            if self.config.init_noise:
                init += self.config.init_noise * torch.randn(rank, generator=generator, dtype=init.dtype)
            self.z[self.key(name)] = nn.Parameter(init.to(self.decomposition.s[name].device))
        # A fixed multiplier per name (strategy C's mixtures, reference passes) overrides z when set.
        self._override: dict[str, torch.Tensor] | None = None
        self._identity = False  # the override is the identity: factored modules run the base weights
        self._factored = False

    # --------------------------------------------------------------- bookkeeping

    @staticmethod
    def key(name: str) -> str:
        """The ParameterDict key of a module name (dots are not allowed in keys)."""
        return name.replace(".", "__")

    @property
    def model(self) -> nn.Module:
        """The adapted model."""
        return self._model[0]

    @property
    def weights_hash(self) -> str:
        """The hash of the base weights (experts record it to refuse another base model)."""
        return self.decomposition.weights_hash

    def num_trainable(self) -> int:
        """The number of trainable SVF parameters (sum of the ranks of the targets)."""
        return sum(p.numel() for p in self.z.values())

    def multipliers(self) -> dict[str, torch.Tensor]:
        """Per target, the multiplier ``m`` before renormalisation (what mixtures combine)."""
        if self._override is not None:
            return dict(self._override)
        return {
            n: multiplier(self.z[self.key(n)], self.config.parameterization, max_mult=self.config.max_mult)
            for n in self.names
        }

    def effective(self, name: str) -> torch.Tensor:
        """The multiplier ``f`` applied to the singular values of one target."""
        if self._override is not None:
            m = self._override[name]
        else:
            m = multiplier(
                self.z[self.key(name)], self.config.parameterization, max_mult=self.config.max_mult
            )
        return effective_multiplier(m, self.decomposition.s[name], self.config.parameterization)

    def vectors(self) -> dict[str, torch.Tensor]:
        """The trained z vectors by module name (detached copies)."""
        return {n: self.z[self.key(n)].detach().clone() for n in self.names}

    @torch.no_grad()
    def load_vectors(self, vectors: Mapping[str, torch.Tensor]) -> None:
        """Set z from ``{module name: [r]}``; every target must be present with the right size."""
        missing = [n for n in self.names if n not in vectors]
        if missing:
            raise UserError(f"the vectors lack {len(missing)} targets of this SVF, e.g. {missing[0]}")
        for name in self.names:
            value = vectors[name]
            param = self.z[self.key(name)]
            if value.shape != param.shape:
                raise UserError(
                    f"vector for {name} has shape {tuple(value.shape)}, expected {tuple(param.shape)}"
                )
            param.copy_(value.to(param))

    @torch.no_grad()
    def reset(self) -> None:
        """z back to the identity (the base model)."""
        for param in self.z.values():
            param.fill_(self.config.identity_value)
        self._override = None
        self._identity = False

    @contextlib.contextmanager
    def using_multipliers(self, multipliers: Mapping[str, torch.Tensor] | None) -> Iterator[None]:
        """Within the block, use fixed multipliers ``m`` instead of z (None: the base model, whose factored
        forward then runs the original weights directly)."""
        identity = multipliers is None
        if multipliers is None:
            multipliers = {n: torch.ones_like(self.decomposition.s[n]) for n in self.names}
        previous = (self._override, self._identity)
        self._override = {n: multipliers[n].detach().to(self.decomposition.s[n]) for n in self.names}
        self._identity = identity
        try:
            yield
        finally:
            self._override, self._identity = previous

    # --------------------------------------------------------------- forward modes

    def _set_module(self, name: str, module: nn.Module) -> None:
        parent_name, _, leaf = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        setattr(parent, leaf, module)

    @contextlib.contextmanager
    def factored(self) -> Iterator[nn.Module]:
        """Within the block the targets run the factored forward (gradients reach z); the model is yielded.

        The original ``nn.Linear`` modules are put back on exit, so an engine over the model keeps its lean
        path. The targets' weights are restored to the base first (the factored forward does not read them).
        """
        if self._factored:
            yield self.model
            return
        self._factored = True
        for name in self.names:
            self._set_module(name, SVFLinear(self, name, self._modules_by_name[name]))
        try:
            yield self.model
        finally:
            for name in self.names:
                self._set_module(name, self._modules_by_name[name])
            self._factored = False

    @torch.no_grad()
    def merged_weight(self, name: str) -> torch.Tensor:
        """``W + U diag(s ⊙ (f - 1)) Vh`` in the model's dtype (the base weight exactly when f = 1)."""
        dec = self.decomposition
        f = self.effective(name).detach().to(dec.s[name].dtype)
        delta = compose_weight(dec.u[name], dec.s[name], dec.vh[name], f - 1)
        base = self._base_weights[name]
        return (base.to(delta.dtype) + delta).to(base.dtype)

    @torch.no_grad()
    def merge(self, llm: Any = None) -> None:
        """Write the adapted weights into the model's target matrices, for sampling through the engine.

        Args:
            llm: a :class:`testtime.llm.local.LocalLLM` (or engine) sampling this model; it is told about the
                change through the LLM layer's weight-update contract.
        """
        updating = getattr(llm, "updating_weights", None) if llm is not None else None
        with updating() if callable(updating) else contextlib.nullcontext():
            for name in self.names:
                self._modules_by_name[name].weight.copy_(self.merged_weight(name))
        if not callable(updating):
            notify_weights_changed(llm)

    @torch.no_grad()
    def restore(self, llm: Any = None) -> None:
        """Put the base weights back (the model is the base model again; z is kept)."""
        updating = getattr(llm, "updating_weights", None) if llm is not None else None
        with updating() if callable(updating) else contextlib.nullcontext():
            for name in self.names:
                self._modules_by_name[name].weight.copy_(self._base_weights[name])
        if not callable(updating):
            notify_weights_changed(llm)

    def export(self, directory: str | Path, tokenizer: Any = None) -> Path:
        """Save the adapted model as a plain transformers checkpoint (``save_pretrained``) with its tokenizer.

        The merged weights are written into the model first; ``testtime llm generate --model DIR`` loads it.
        """
        directory = Path(directory)
        self.merge()
        self.model.save_pretrained(directory, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        return directory
