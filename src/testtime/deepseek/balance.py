"""Auxiliary-loss-free load balancing (DeepSeek-V3 Section 2.1.2) and load telemetry.

After each optimizer step every MoE layer's routing bias moves by ``b_i += gamma * sign(mean_j load_j -
load_i)``: overloaded experts become less attractive, underloaded ones more, without a gradient through the
language-model loss. ``load_i`` counts the tokens routed to expert i since the previous update (all
micro-batches of the step); under DDP the counts are all-reduced first so that every rank applies the same
update. The paper's gamma is 0.001 for the first 14.3T tokens and 0 for the last 500B
(:class:`GammaSchedule`).

Telemetry follows Wang et al. 2024 ("Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts",
the method V3 adopts): ``MaxVio = max_i load_i / mean load - 1`` per batch and over a whole evaluation set
(global), plus the experts that received no token and the load per data domain.

Shape legend: ``L`` MoE layers, ``E`` routed experts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from testtime.deepseek.config import DeepSeekV3Config
from testtime.deepseek.moe import MoE

__all__ = [
    "BalanceHook",
    "GammaSchedule",
    "LoadTracker",
    "max_violation",
    "moe_layers",
    "update_routing_bias",
]


def moe_layers(model: nn.Module) -> list[MoE]:
    """Every :class:`MoE` of ``model`` in module order."""
    return [m for m in model.modules() if isinstance(m, MoE)]


def max_violation(load: torch.Tensor) -> torch.Tensor:
    """``max_i load_i / mean(load) - 1`` over the last dimension (0 when perfectly balanced).

    Args:
        load: ``(..., E)`` token counts.

    Returns:
        ``(...)`` MaxVio; 0 where no token was routed.
    """
    mean = load.float().mean(-1)
    return torch.where(mean > 0, load.float().amax(-1) / mean.clamp_min(1e-12) - 1, torch.zeros_like(mean))


@torch.no_grad()
def update_routing_bias(model: nn.Module, gamma: float) -> dict[str, float]:
    """Apply ``b_i += gamma * sign(mean load - load_i)`` to every MoE layer and reset the pending loads.

    Call it after each optimizer step. Under an initialised ``torch.distributed`` the loads of all ranks are
    summed (one all-reduce for all layers) before the update.

    Args:
        model: a module containing :class:`MoE` layers (trained since the last call).
        gamma: the bias update speed (0 only resets the loads).

    Returns:
        ``{"maxvio_step": mean over layers of the step's MaxVio, "bias_abs_mean": mean |b|}``.
    """
    layers = moe_layers(model)
    if not layers:
        return {}
    loads = torch.stack([m.pending_load for m in layers])  # (L, E)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(loads)
    for layer, load in zip(layers, loads, strict=True):
        if gamma and load.sum() > 0:
            bias = layer.gate.e_score_correction_bias
            bias += gamma * torch.sign(load.mean() - load).to(bias.dtype)
        layer.pending_load.zero_()
    biases = torch.cat([m.gate.e_score_correction_bias for m in layers])
    return {"maxvio_step": float(max_violation(loads).mean()), "bias_abs_mean": float(biases.abs().mean())}


@dataclass(kw_only=True)
class GammaSchedule:
    """The bias update speed over training: ``gamma`` until the stop, then ``final`` (Section 4.2: 0.001
    for the first 14.3T tokens, 0 for the last 500B).

    The stop is at optimizer step ``stop_step`` when it is set, else at ``stop_fraction`` of the total
    steps when those are known; with neither, gamma stays constant.

    Attributes:
        gamma: the update speed (0.001 in the paper).
        stop_fraction: fraction of training after which ``final`` applies (14.3T / 14.8T), or None.
        stop_step: the optimizer step from which ``final`` applies (overrides the fraction), or None.
        final: the speed afterwards (0 in the paper).
    """

    gamma: float = 0.001
    stop_fraction: float | None = 14.3 / 14.8
    stop_step: int | None = None
    final: float = 0.0

    def __call__(self, step: int, total_steps: int | None = None) -> float:
        """Gamma for optimizer step ``step`` (0-based) of ``total_steps``."""
        if self.stop_step is not None:
            return self.final if step >= self.stop_step else self.gamma
        if self.stop_fraction is None or not total_steps or total_steps <= 0:
            return self.gamma
        return self.final if step >= self.stop_fraction * total_steps else self.gamma


class BalanceHook:
    """The after-optimizer-step hook: update the routing biases with a scheduled gamma, and set lambda.

    :class:`testtime.deepseek.train.DeepSeekV3ForTraining` runs one after every optimizer step, built from
    its config (:meth:`from_config`); custom loops can build their own.

    Args:
        gamma: the bias schedule; None uses the model config's ``bias_update_speed`` as a constant.
        mtp_weight: schedule of the MTP weight lambda, ``(step, total) -> float``
            (:class:`testtime.deepseek.mtp.MTPWeightSchedule`), or None to leave lambda alone.
        keep_history: append every step's stats to :attr:`history`.
    """

    def __init__(
        self,
        gamma: GammaSchedule | None = None,
        mtp_weight: Callable[[int, int | None], float] | None = None,
        *,
        keep_history: bool = True,
    ) -> None:
        self.gamma = gamma
        self.mtp_weight = mtp_weight
        self.keep_history = keep_history
        self.history: list[dict[str, float]] = []

    @classmethod
    def from_config(cls, config: DeepSeekV3Config) -> BalanceHook:
        """gamma = ``bias_update_speed`` until ``bias_update_stop_step``, lambda = ``mtp_loss_weight`` until
        ``mtp_weight_switch_step`` and ``mtp_loss_weight_final`` after (None: never stop / switch)."""
        from testtime.deepseek.mtp import MTPWeightSchedule

        gamma = GammaSchedule(
            gamma=config.bias_update_speed, stop_fraction=None, stop_step=config.bias_update_stop_step
        )
        mtp_weight = MTPWeightSchedule(
            first=config.mtp_loss_weight,
            then=config.mtp_loss_weight_final,
            switch_fraction=None,
            switch_step=config.mtp_weight_switch_step,
        )
        return cls(gamma=gamma, mtp_weight=mtp_weight, keep_history=False)

    def __call__(self, model: nn.Module, step: int, total_steps: int | None = None) -> dict[str, float]:
        """Update the biases after optimizer step ``step`` (0-based) and set lambda for the next step.

        Returns:
            The stats of :func:`update_routing_bias` plus ``gamma`` (and ``mtp_loss_weight`` when scheduled).
        """
        if self.gamma is not None:
            gamma = self.gamma(step, total_steps)
        else:
            gamma = float(getattr(getattr(model, "config", None), "bias_update_speed", 0.0))
        stats = update_routing_bias(model, gamma)
        stats["gamma"] = gamma
        if self.mtp_weight is not None and hasattr(model, "mtp_loss_weight"):
            model.mtp_loss_weight = float(self.mtp_weight(step + 1, total_steps))
            stats["mtp_loss_weight"] = model.mtp_loss_weight
        if self.keep_history:
            self.history.append(stats)
        return stats


class LoadTracker:
    """Accumulates expert loads over evaluation batches, optionally per domain.

    Call :meth:`record` after each forward; :meth:`summary` gives MaxVio per batch (mean over batches and
    layers), MaxVio global (loads summed over all batches), the experts that never received a token, and
    each domain's load distribution.

    Args:
        model: the model whose MoE layers to read: those of ``model.model`` (the main stack, not the MTP
            modules) when it has one, else all of them.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = moe_layers(getattr(model, "model", model))
        self.batch_maxvio: list[float] = []
        self.total: torch.Tensor | None = None
        self.by_domain: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(0))

    def record(self, domain: str | None = None) -> float:
        """Read the layers' ``last_load``; returns this batch's MaxVio (mean over layers)."""
        loads = torch.stack([m.last_load.float().cpu() for m in self.layers])  # (L, E)
        vio = float(max_violation(loads).mean())
        self.batch_maxvio.append(vio)
        self.total = loads if self.total is None else self.total + loads
        if domain is not None:
            previous = self.by_domain[domain]
            self.by_domain[domain] = loads if previous.numel() == 0 else previous + loads
        return vio

    def summary(self) -> dict[str, object]:
        """``maxvio_batch``, ``maxvio_global``, ``dead_experts`` (per layer) and ``domain_load`` (fractions)."""
        if self.total is None:
            raise ValueError("no batch recorded")
        return {
            "maxvio_batch": sum(self.batch_maxvio) / len(self.batch_maxvio),
            "maxvio_global": float(max_violation(self.total).mean()),
            "dead_experts": [int((row == 0).sum()) for row in self.total],
            "domain_load": {
                d: (load / load.sum(-1, keepdim=True).clamp_min(1)).tolist()
                for d, load in self.by_domain.items()
            },
        }
