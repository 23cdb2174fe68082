"""GRPO loss variants against hand computations (plain-Python loops) and against TRL's own loss code."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from testtime.rl.grpo import (
    group_advantages,
    kl_penalty,
    overlong_penalty,
    policy_loss,
    policy_loss_and_stats,
    zero_std_groups,
)

# A 2 x 3 example with a ragged mask (the second completion has 2 tokens).
LOGPS = [[-1.0, -0.5, -2.0], [-0.3, -1.2, 0.0]]
OLD = [[-1.1, -0.2, -2.0], [-0.5, -0.9, 0.0]]
REF = [[-0.9, -0.7, -1.5], [-0.4, -1.1, 0.0]]
MASK = [[1, 1, 1], [1, 1, 0]]
ADV = [0.8, -0.6]
EPS, EPS_HIGH, BETA, LMAX = 0.2, 0.28, 0.05, 4


def hand_kl(lp: float, ref: float, estimator: str) -> float:
    d = ref - lp
    return {"k1": -d, "k2": d * d / 2, "k3": math.exp(d) - d - 1}[estimator]


def hand_loss(loss_type: str, *, beta: float, estimator: str = "k3", level: str = "token") -> float:
    """The loss written out token by token."""
    per_seq_terms: list[list[float]] = []
    for i in range(2):
        n = sum(MASK[i])
        seq_log_ratio = sum(LOGPS[i][t] - OLD[i][t] for t in range(n)) / n
        terms = []
        for t in range(n):
            log_r = LOGPS[i][t] - OLD[i][t] if level == "token" else seq_log_ratio
            r = math.exp(log_r)
            clipped = min(max(r, 1 - EPS), 1 + EPS_HIGH)
            term = -min(r * ADV[i], clipped * ADV[i])
            if beta:
                term += beta * hand_kl(LOGPS[i][t], REF[i][t], estimator)
            terms.append(term)
        per_seq_terms.append(terms)
    total = sum(sum(t) for t in per_seq_terms)
    tokens = sum(len(t) for t in per_seq_terms)
    if loss_type == "grpo":
        return sum(sum(t) / len(t) for t in per_seq_terms) / 2
    if loss_type in ("bnpo", "dapo"):
        return total / tokens
    if loss_type == "dr_grpo":
        return total / (2 * LMAX)
    raise AssertionError(loss_type)


def tensors():
    logps = torch.tensor(LOGPS, dtype=torch.float64, requires_grad=True)
    return logps, torch.tensor(OLD, dtype=torch.float64), torch.tensor(REF, dtype=torch.float64)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, BETA])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_loss_equals_hand_computation(loss_type, beta, level):
    logps, old, ref = tensors()
    loss = policy_loss(
        logps,
        old,
        torch.tensor(ADV, dtype=torch.float64),
        torch.tensor(MASK, dtype=torch.float64),
        loss_type=loss_type,
        epsilon=EPS,
        epsilon_high=EPS_HIGH,
        ref_logps=ref,
        beta=beta,
        max_completion_length=LMAX,
        importance_sampling_level=level,
    )
    assert loss.item() == pytest.approx(hand_loss(loss_type, beta=beta, level=level), abs=1e-12)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_equal_hand_computation(estimator):
    logps, old, ref = tensors()
    loss = policy_loss(
        logps,
        old,
        torch.tensor(ADV, dtype=torch.float64),
        torch.tensor(MASK, dtype=torch.float64),
        loss_type="grpo",
        epsilon=EPS,
        epsilon_high=EPS_HIGH,
        ref_logps=ref,
        beta=BETA,
        kl_estimator=estimator,
    )
    assert loss.item() == pytest.approx(hand_loss("grpo", beta=BETA, estimator=estimator), abs=1e-12)
    kl = kl_penalty(logps, ref, estimator=estimator)
    assert kl[0, 0].item() == pytest.approx(hand_kl(-1.0, -0.9, estimator), abs=1e-12)


def test_dapo_normalizer_spans_the_optimizer_batch():
    logps, old, _ = tensors()
    args = (logps, old, torch.tensor(ADV, dtype=torch.float64), torch.tensor(MASK, dtype=torch.float64))
    local = policy_loss(*args, loss_type="dapo", epsilon=EPS, epsilon_high=EPS_HIGH)
    wide = policy_loss(*args, loss_type="dapo", epsilon=EPS, epsilon_high=EPS_HIGH, num_items=10)
    assert wide.item() == pytest.approx(local.item() * 5 / 10, abs=1e-12)


def test_clipped_tokens_get_no_gradient_and_stats_count_them():
    # token (0, 1): r = exp(-0.3) = 0.74 < 0.8 with A > 0: not clipped (min picks r A);
    # token (1, 0): r = exp(0.2) = 1.22 with A < 0: min(-0.73, -0.6 * 1.2 = -0.72) picks r A: not clipped;
    # token (1, 1): r = exp(-0.3) = 0.74 < 0.8 with A < 0: clipped, zero gradient.
    logps, old, _ = tensors()
    loss, stats = policy_loss_and_stats(
        logps,
        old,
        torch.tensor(ADV, dtype=torch.float64),
        torch.tensor(MASK, dtype=torch.float64),
        loss_type="bnpo",
        epsilon=EPS,
        epsilon_high=EPS_HIGH,
    )
    loss.backward()
    assert logps.grad[1, 1].item() == 0.0
    assert logps.grad[0, 1].item() != 0.0 and logps.grad[1, 0].item() != 0.0
    assert logps.grad[1, 2].item() == 0.0  # padding
    assert stats.clip_low == pytest.approx(1 / 5) and stats.clip_high == 0.0 and stats.tokens == 5


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])  # groups of 3: [1, 0, 0], [1, 1, 1]
    std = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # Bessel
    expected = [(2 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), 0.0, 0.0, 0.0]
    assert group_advantages(rewards, 3).tolist() == pytest.approx(expected, abs=1e-6)
    assert group_advantages(rewards, 3, scale_rewards="none").tolist() == pytest.approx(
        [2 / 3, -1 / 3, -1 / 3, 0, 0, 0], abs=1e-6
    )
    batch_std = rewards.std().item()
    assert group_advantages(rewards, 3, scale_rewards="batch").tolist() == pytest.approx(
        [(2 / 3) / (batch_std + 1e-4), (-1 / 3) / (batch_std + 1e-4), (-1 / 3) / (batch_std + 1e-4), 0, 0, 0],
        abs=1e-6,
    )
    # leave-one-out: r_i - mean of the others
    loo = group_advantages(rewards, 3, scale_rewards="none", leave_one_out=True)
    assert loo.tolist() == pytest.approx([1 - 0, 0 - 0.5, 0 - 0.5, 0, 0, 0], abs=1e-6)
    assert zero_std_groups(rewards, 3).tolist() == [False, True]
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(rewards, 4)


def test_overlong_penalty_by_hand():
    # L_max 10, cache 4: free up to 6, linear to -1 at 10, -1 beyond.
    assert overlong_penalty([3, 6, 7, 8, 10, 12], max_completion_length=10, cache_length=4) == pytest.approx(
        [0, 0, -0.25, -0.5, -1, -1]
    )


def test_bad_arguments_are_value_errors():
    logps, old, _ = tensors()
    adv, mask = torch.tensor(ADV), torch.tensor(MASK, dtype=torch.float64)
    with pytest.raises(ValueError, match="loss_type"):
        policy_loss(logps, old, adv, mask, loss_type="ppo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ref_logps"):
        policy_loss(logps, old, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="max_completion_length"):
        policy_loss(logps, old, adv, mask, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logps, old, torch.zeros(3), mask)


# ---------------------------------------------------------------------------- TRL
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, BETA])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_equals_trl_grpo_trainer_loss(loss_type, beta, level):
    """TRL's ``GRPOTrainer._compute_loss`` itself, run on a stand-in trainer whose log-prob forward returns
    our logps: the comparison covers TRL's ratio, clipping, KL and aggregation code on identical inputs
    (old logps, ref logps, advantages, mask); not its model forward (tested in test_logprobs.py)."""
    pytest.importorskip("trl")
    from trl.trainer.grpo_trainer import GRPOTrainer

    if level == "sequence" and loss_type != "grpo":
        pytest.skip("TRL rejects sequence-level ratios with token-sum losses at config time")
    logps, old, ref = tensors()
    adv = torch.tensor(ADV, dtype=torch.float64)
    mask = torch.tensor(MASK, dtype=torch.float64)
    identity = SimpleNamespace(
        gather=lambda x: x.reshape(-1) if x.dim() == 0 else x,
        gather_for_metrics=lambda x: x,
        reduce=lambda x, reduction="sum": x,
        num_processes=1,
        sync_gradients=True,
        autocast=None,
    )
    trl_logps = logps.detach().clone().requires_grad_(True)
    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (trl_logps, torch.zeros_like(trl_logps), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        loss_type=loss_type,
        epsilon_low=EPS,
        epsilon_high=EPS_HIGH,
        use_vllm=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=LMAX,
        accelerator=identity,
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics={"train": __import__("collections").defaultdict(list)},
    )
    inputs = {
        "prompt_ids": torch.ones(2, 1, dtype=torch.long),
        "prompt_mask": torch.ones(2, 1, dtype=torch.long),
        "completion_ids": torch.ones(2, 3, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    trl_loss = GRPOTrainer._compute_loss(stub, None, inputs)
    ours = policy_loss(
        logps,
        old,
        adv,
        mask,
        loss_type=loss_type,
        epsilon=EPS,
        epsilon_high=EPS_HIGH,
        ref_logps=ref,
        beta=beta,
        max_completion_length=LMAX,
        importance_sampling_level=level,
    )
    assert ours.item() == pytest.approx(trl_loss.item(), abs=1e-12)
    ours.backward()
    trl_loss.backward()
    torch.testing.assert_close(logps.grad, trl_logps.grad, atol=1e-12, rtol=0)
