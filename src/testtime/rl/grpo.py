"""Group Relative Policy Optimization as small pure functions: advantages, ratios, KL, clipped surrogate, aggregation.

GRPO (DeepSeekMath, arXiv 2402.03300, eq. 3; DeepSeek-R1, arXiv 2501.12948, eqs. 1-3) samples a group of G
outputs per question, scores them, and maximises

    J(theta) = E[ 1/G sum_i 1/|o_i| sum_t ( min(r_it A_i, clip(r_it, 1 - eps, 1 + eps) A_i) - beta D_KL ) ]

with ``r_it = pi_theta(o_it | q, o_i,<t) / pi_old(o_it | q, o_i,<t)``, the group-normalised advantage
``A_i = (R_i - mean(R)) / std(R)`` (eq. 3 of R1) and the per-token KL estimate
``D_KL = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1`` (k3, eq. 2 of R1; Schulman 2020). The variants
the field settled on are options here, named as in TRL's GRPOConfig:

- ``loss_type``: ``grpo`` (per-sequence token mean, then mean over sequences: DeepSeekMath eq. 3),
  ``bnpo`` (token mean over the local batch), ``dapo`` (token mean over every token of the whole
  optimizer batch, across micro-batches and ranks: DAPO, arXiv 2503.14476, eq. 8; pass ``num_items``),
  ``dr_grpo`` (sum over tokens divided by the constant ``B x max_completion_length``: Dr. GRPO, arXiv
  2503.20783, eq. 4, which also drops the std scaling: ``scale_rewards="none"``).
- ``epsilon`` / ``epsilon_high``: decoupled clip range (DAPO's clip-higher, eq. 10: 0.2 / 0.28).
- ``importance_sampling_level``: ``token`` (PPO-style) or ``sequence`` (GSPO, arXiv 2507.18071, eq. 7:
  the length-normalised sequence ratio ``exp(mean_t log r_it)``, one per sequence, broadcast to its tokens;
  R1's eq. 1 as printed also uses a sequence-level ratio ``pi(o_i|q) / pi_old(o_i|q)``).
- ``kl_estimator``: ``k1`` (``log pi - log pi_ref``), ``k2`` (``(log pi - log pi_ref)^2 / 2``), ``k3`` (above).
- advantages: group std (default), batch std, no std, or leave-one-out (RLOO) baselines.

Conventions (chosen to match TRL 1.16's GRPOTrainer so the numbers are comparable, see tests/rl/test_grpo.py):
the std is the unbiased (Bessel) sample std and the advantage denominator is ``std + 1e-4``; the KL term is
added per token before aggregation; ``old_logps`` and ``ref_logps`` carry no gradient.

Shape legend: B sequences (G per group), T longest completion, mask (B, T) with 1.0 on real tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "LOSS_TYPES",
    "KL_ESTIMATORS",
    "LossStats",
    "aggregate_loss",
    "clipped_surrogate",
    "group_advantages",
    "importance_log_ratio",
    "kl_penalty",
    "overlong_penalty",
    "policy_loss",
    "policy_loss_and_stats",
    "zero_std_groups",
]

LossType = Literal["grpo", "bnpo", "dapo", "dr_grpo"]
LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dapo", "dr_grpo")
KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
ScaleRewards = Literal["group", "batch", "none"]
STD_EPS = 1e-4  # added to the std in the advantage denominator (TRL's value)


def group_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    *,
    scale_rewards: ScaleRewards = "group",
    leave_one_out: bool = False,
) -> torch.Tensor:
    """Group-relative advantages (R1 eq. 3): ``(R_i - mean_group) / (std + 1e-4)``.

    Args:
        rewards: (B,) with the G = ``num_generations`` samples of a prompt contiguous.
        num_generations: G, the group size (>= 2 for a non-zero advantage).
        scale_rewards: ``group`` divides by the group's std, ``batch`` by the whole batch's std (Dr. GRPO's
            and REINFORCE++'s remedy for the difficulty bias keeps the scale), ``none`` does not divide.
        leave_one_out: baseline of sample i is the mean of the *other* G - 1 rewards (RLOO); the result is
            ``G / (G - 1)`` times the centred reward, then scaled as asked.

    Returns:
        (B,) advantages, float32.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    if num_generations < 1 or rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {num_generations}")
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards must be group, batch or none, got {scale_rewards!r}")
    grouped = rewards.float().view(-1, num_generations)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if leave_one_out:
        if num_generations < 2:
            raise ValueError("leave-one-out needs num_generations >= 2")
        centred = centred * num_generations / (num_generations - 1)
    if scale_rewards == "group":
        std = grouped.std(dim=1, keepdim=True) if num_generations > 1 else torch.zeros_like(centred[:, :1])
        centred = centred / (std + STD_EPS)
    elif scale_rewards == "batch":
        std = rewards.float().std() if rewards.numel() > 1 else rewards.new_zeros(())
        centred = centred / (std + STD_EPS)
    return centred.reshape(-1)


def zero_std_groups(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """(B / G,) bool: the groups whose rewards are all equal (no learning signal; DAPO's dynamic sampling drops them)."""
    grouped = rewards.view(-1, num_generations)
    return (grouped == grouped[:, :1]).all(dim=1)


def importance_log_ratio(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    level: Literal["token", "sequence"] = "token",
) -> torch.Tensor:
    """``log r``: per token (B, T), or per sequence as the masked token mean broadcast to (B, T) (GSPO eq. 7).

    Args:
        logps: (B, T) current policy log-probs (with gradients).
        old_logps: (B, T) sampling-policy log-probs (no gradients).
        mask: (B, T).
        level: ``token`` or ``sequence``.
    """
    log_ratio = logps - old_logps.detach()
    if level == "token":
        return log_ratio
    if level == "sequence":
        seq = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return seq.unsqueeze(-1).expand_as(logps)
    raise ValueError(f"importance_sampling_level must be token or sequence, got {level!r}")


def kl_penalty(
    logps: torch.Tensor, ref_logps: torch.Tensor, *, estimator: KLEstimator = "k3"
) -> torch.Tensor:
    """Per-token estimate of ``KL(pi_theta || pi_ref)`` from samples of pi_theta (R1 eq. 2 is k3).

    With ``d = log pi_ref - log pi_theta``: k1 = ``-d``, k2 = ``d^2 / 2``, k3 = ``exp(d) - d - 1``.

    Returns:
        (B, T), differentiable in ``logps``.
    """
    delta = ref_logps.detach() - logps
    if estimator == "k1":
        return -delta
    if estimator == "k2":
        return 0.5 * delta.pow(2)
    if estimator == "k3":
        return torch.exp(delta) - delta - 1.0
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def clipped_surrogate(
    log_ratio: torch.Tensor, advantages: torch.Tensor, *, epsilon: float, epsilon_high: float | None = None
) -> torch.Tensor:
    """Per-token loss ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)`` (PPO's clipped objective, negated).

    Args:
        log_ratio: (B, T) ``log r``.
        advantages: (B,) per-sequence advantages.
        epsilon: the lower clip range ``eps_low``.
        epsilon_high: the upper clip range (default: ``epsilon``; DAPO uses 0.28).

    Returns:
        (B, T) per-token losses.
    """
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(-1).to(ratio.dtype)
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + high)
    return -torch.min(ratio * adv, clipped * adv)


def aggregate_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: LossType,
    max_completion_length: int | None = None,
    num_items: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce (B, T) per-token losses to a scalar the way each GRPO variant does.

    Args:
        per_token_loss: (B, T).
        mask: (B, T).
        loss_type: ``grpo``: mean over sequences of each sequence's token mean; ``bnpo``: sum / tokens in
            this batch; ``dapo``: sum / ``num_items`` (the tokens of the whole optimizer batch; default this
            batch's); ``dr_grpo``: sum / (B x ``max_completion_length``).
        max_completion_length: required for ``dr_grpo``.
        num_items: the ``dapo`` normalizer.
    """
    masked = per_token_loss * mask
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dapo":
        normalizer = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=masked.dtype)
        return masked.sum() / normalizer.clamp(min=1.0)
    if loss_type == "dr_grpo":
        if max_completion_length is None or max_completion_length < 1:
            raise ValueError("loss_type dr_grpo needs max_completion_length >= 1")
        return masked.sum() / (per_token_loss.shape[0] * max_completion_length)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


@dataclass(kw_only=True)
class LossStats:
    """Detached diagnostics of one loss evaluation (masked token means unless said otherwise).

    Attributes:
        clip_low: share of tokens clipped at ``1 - eps`` with a negative advantage.
        clip_high: share of tokens clipped at ``1 + eps_high`` with a positive advantage.
        kl: mean per-token KL estimate (0 without a reference).
        ratio_mean: mean importance ratio.
        tokens: number of real tokens.
    """

    clip_low: float
    clip_high: float
    kl: float
    ratio_mean: float
    tokens: float


def policy_loss_and_stats(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: LossType = "grpo",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    max_completion_length: int | None = None,
    importance_sampling_level: Literal["token", "sequence"] = "token",
    kl_estimator: KLEstimator = "k3",
    num_items: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """:func:`policy_loss` and its diagnostics (see there for the arguments)."""
    if logps.shape != old_logps.shape or logps.shape != mask.shape:
        raise ValueError(
            f"logps {tuple(logps.shape)}, old_logps {tuple(old_logps.shape)} and mask {tuple(mask.shape)} differ"
        )
    if advantages.shape != logps.shape[:1]:
        raise ValueError(f"advantages must be ({logps.shape[0]},), got {tuple(advantages.shape)}")
    if epsilon < 0 or (epsilon_high is not None and epsilon_high < 0):
        raise ValueError("epsilon and epsilon_high must be >= 0")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps")
    mask = mask.to(logps.dtype)
    log_ratio = importance_log_ratio(logps, old_logps, mask, level=importance_sampling_level)
    per_token = clipped_surrogate(log_ratio, advantages, epsilon=epsilon, epsilon_high=epsilon_high)
    kl = None
    if beta > 0 and ref_logps is not None:
        kl = kl_penalty(logps, ref_logps, estimator=kl_estimator)
        per_token = per_token + beta * kl
    loss = aggregate_loss(
        per_token, mask, loss_type=loss_type, max_completion_length=max_completion_length, num_items=num_items
    )
    with torch.no_grad():
        tokens = mask.sum().clamp(min=1.0)
        ratio = torch.exp(log_ratio)
        adv = advantages.unsqueeze(-1)
        high = epsilon if epsilon_high is None else epsilon_high
        low_clipped = ((ratio < 1 - epsilon) & (adv < 0)).to(mask.dtype)
        high_clipped = ((ratio > 1 + high) & (adv > 0)).to(mask.dtype)
        if kl is None and ref_logps is not None:
            kl = kl_penalty(logps, ref_logps, estimator=kl_estimator)
        stats = LossStats(
            clip_low=float((low_clipped * mask).sum() / tokens),
            clip_high=float((high_clipped * mask).sum() / tokens),
            kl=0.0 if kl is None else float((kl.detach() * mask).sum() / tokens),
            ratio_mean=float((ratio * mask).sum() / tokens),
            tokens=float(mask.sum()),
        )
    return loss, stats


def policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: LossType = "grpo",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    max_completion_length: int | None = None,
    importance_sampling_level: Literal["token", "sequence"] = "token",
    kl_estimator: KLEstimator = "k3",
    num_items: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """The GRPO loss to minimise (the negated objective of DeepSeekMath eq. 3 / R1 eq. 1 and its variants).

    Args:
        logps: (B, T) per-token log-probs of the sampled completions under the current policy (grad).
        old_logps: (B, T) the same under the sampling policy (no grad; equal to ``logps`` on the first
            iteration, where the ratio is 1 and only its gradient matters).
        advantages: (B,) one advantage per sequence (:func:`group_advantages`).
        mask: (B, T) 1.0 on real completion tokens.
        loss_type: ``grpo``, ``bnpo``, ``dapo`` or ``dr_grpo`` (:func:`aggregate_loss`).
        epsilon: lower clip range.
        epsilon_high: upper clip range (default ``epsilon``).
        ref_logps: (B, T) reference-model log-probs, needed when ``beta > 0``.
        beta: KL coefficient (R1: 0.001; TRL's default 0).
        max_completion_length: the constant of ``dr_grpo``.
        importance_sampling_level: ``token`` or ``sequence`` (GSPO).
        kl_estimator: ``k1``, ``k2`` or ``k3`` (R1).
        num_items: the ``dapo`` normalizer (tokens in the whole optimizer batch; default this batch's).

    Returns:
        A scalar loss.
    """
    loss, _ = policy_loss_and_stats(
        logps,
        old_logps,
        advantages,
        mask,
        loss_type=loss_type,
        epsilon=epsilon,
        epsilon_high=epsilon_high,
        ref_logps=ref_logps,
        beta=beta,
        max_completion_length=max_completion_length,
        importance_sampling_level=importance_sampling_level,
        kl_estimator=kl_estimator,
        num_items=num_items,
    )
    return loss


def overlong_penalty(lengths: Sequence[int], *, max_completion_length: int, cache_length: int) -> list[float]:
    """DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13), one value per completion length.

    0 up to ``L_max - L_cache``; then falls linearly to -1 at ``L_max``; -1 beyond.
    """
    if cache_length < 0 or cache_length > max_completion_length:
        raise ValueError("cache_length must be in [0, max_completion_length]")
    start = max_completion_length - cache_length
    out = []
    for length in lengths:
        if length <= start:
            out.append(0.0)
        elif length <= max_completion_length:
            out.append((start - length) / cache_length)
        else:
            out.append(-1.0)
    return out
