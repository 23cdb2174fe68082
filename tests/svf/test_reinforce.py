"""REINFORCE pieces against hand computations, and short training runs on a tiny model that must learn."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from testtime.errors import UserError
from testtime.svf import SVF, SVFConfig
from testtime.svf.reinforce import (
    ClozeEnv,
    GenerationEnv,
    LoRAPolicy,
    ReinforceConfig,
    SVFPolicy,
    advantages,
    k3_kl,
    num_trainable,
    reinforce_loss,
    rewards_from_verdicts,
    sequence_logp,
    split_train_val,
    train,
)
from testtime.tasks import Instance, task_from_function
from testtime.testing import build_tiny_tokenizer


def test_rewards_and_advantages_by_hand():
    assert rewards_from_verdicts([True, False], [1.0, 0.25]).tolist() == [1.0, -1.0]
    assert rewards_from_verdicts([True, False], [1.0, 0.25], kind="score").tolist() == [1.0, -0.5]
    r = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    assert advantages(r).tolist() == r.tolist()
    assert advantages(r, group_size=3, baseline="group").tolist() == pytest.approx(
        [4 / 3, -2 / 3, -2 / 3, 0.0, 0.0, 0.0]
    )
    with pytest.raises(UserError):
        rewards_from_verdicts([True], [1.0], kind="bogus")


def test_k3_kl_and_loss_by_hand():
    logp = torch.tensor([[-1.0, -2.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # k3 per token: exp(d) - d - 1 with d = ref - logp.
    expected = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]
    assert k3_kl(logp, ref, mask).item() == pytest.approx(sum(expected))
    assert k3_kl(logp, ref, mask, normalize="mean").item() == pytest.approx(sum(expected) / 2)
    assert sequence_logp(logp, mask, "sum").item() == -3.0
    assert sequence_logp(logp, mask, "mean").item() == -1.5
    seq = torch.tensor([-3.0, -1.0])
    adv = torch.tensor([1.0, -1.0])
    kl = torch.tensor([0.5, 0.1])
    # mean(-A log p + λ KL) = ((3 + 0.05) + (-1 + 0.01)) / 2
    assert reinforce_loss(seq, adv, kl, kl_coef=0.1).item() == pytest.approx((3.05 - 0.99) / 2)


def test_config_and_split_errors():
    with pytest.raises(UserError, match="lr"):
        ReinforceConfig(lr=0)
    with pytest.raises(UserError, match="group"):
        ReinforceConfig(baseline="group", num_samples=1)
    train_items, val_items = split_train_val(list(range(10)), 0.2, seed=0)
    assert len(val_items) == 2 and sorted(train_items + val_items) == list(range(10))


class _ToyCloze:
    """Two options per question; option ``answer`` is right. A cloze task shaped like ARC."""

    name = "toy-cloze"

    def cloze_prompt(self, instance):
        return instance.data["question"]

    def verify(self, instance, answer):
        from testtime.tasks import Verdict

        solved = f"({instance.data['answer']})" in answer  # the cloze env answers "The answer is (X)."
        return Verdict(score=float(solved), solved=solved, feedback="")


def _toy_instances(n: int) -> list[Instance]:
    words = ["the quick brown fox", "to be or not", "what is the capital", "one two three four"]
    out = []
    for i in range(n):
        out.append(
            Instance(
                task="toy-cloze",
                id=str(i),
                data={
                    "question": words[i % 4] + f" {i}",
                    "labels": ["A", "B"],
                    "choices": ["paris is the capital", "the lazy dog"],
                    "answer": "B",
                },
            )
        )
    return out


def _prob_correct(policy, env, instances):
    encoded = [env._encode(policy, i) for i in instances]
    with torch.no_grad(), policy.training() as model:
        scores = env._option_scores(model, encoded)
    return sum(torch.softmax(s, -1)[1].item() for s in scores) / len(scores)


def _tiny_svf_policy(tiny_llama_dir, **config):
    """The tiny test model with SVF vectors (no SVD cache) and a policy over them."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    svf = SVF(model, SVFConfig(cache=False, **config))
    return svf, SVFPolicy(svf, build_tiny_tokenizer())


@pytest.mark.parametrize("kind", ["svf", "lora"])
def test_cloze_reinforce_learns_the_rewarded_option(tiny_llama_dir, kind):
    pytest.importorskip("testtime.rl.logprobs")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    tokenizer = build_tiny_tokenizer()
    if kind == "svf":
        policy = SVFPolicy(SVF(model, SVFConfig(targets=("all",), cache=False)), tokenizer)
        lr = 0.05
        assert num_trainable(policy) == 2 * (4 * 32 + 4 * 64 - 32 - 32 + 64 * 1)  # sum of ranks
    else:
        policy = LoRAPolicy(model, tokenizer, rank=4)
        lr = 0.05
        # rank 4 on q (64 -> 64) and v (64 -> 32) in 2 layers: r (in + out) each.
        assert num_trainable(policy) == 2 * 4 * ((64 + 64) + (64 + 32))
    env = ClozeEnv(_ToyCloze(), score="mean")
    instances = _toy_instances(8)
    before = _prob_correct(policy, env, instances)
    config = ReinforceConfig(
        lr=lr, max_grad_norm=1.0, kl_coef=0.01, batch_size=4, num_samples=4, baseline="group",
        max_steps=8, eval_every=4, patience=0, val_fraction=0.0, seed=0,
    )  # fmt: skip
    result = train(policy, env, instances, config)
    after = _prob_correct(policy, env, instances)
    assert result.steps == 8
    assert after > before + 0.05, (before, after)
    assert all("kl" in h for h in result.history if "loss" in h)


def test_generation_reinforce_and_ntp_steps_and_early_stopping(tiny_llama_dir):
    pytest.importorskip("testtime.rl.logprobs")
    svf, policy = _tiny_svf_policy(tiny_llama_dir)
    task = task_from_function(
        "say-the",
        lambda inst, ans: (1.0, "", True) if "the" in ans else (0.0, "say the", False),
        instances=lambda rng, i: {"prompt": f"question {i}"},
    )
    instances = [
        Instance(task="say-the", id=str(i), data={"prompt": f"q {i}"}, reference="the") for i in range(6)
    ]
    env = GenerationEnv(task, max_new_tokens=4)
    for objective in ("reinforce", "ntp"):
        svf.reset()
        config = ReinforceConfig(
            objective=objective, lr=0.05, batch_size=3, num_samples=2, max_steps=2, eval_every=1,
            patience=0, val_fraction=0.34, temperature=1.0,
        )  # fmt: skip
        result = train(policy, env, instances, config)
        assert result.steps == 2
        validations = [h["val_accuracy"] for h in result.history if "val_accuracy" in h]
        assert len(validations) == 3
        losses = [h["loss"] for h in result.history if "loss" in h]
        assert all(h["grad_norm"] > 0 for h in result.history if "loss" in h)
        if objective == "ntp":
            assert losses[1] < losses[0]  # next-token loss on the reference answers goes down
        # The kept state is the best validated one: the base vectors when validation never improved.
        if max(validations[1:]) <= validations[0]:
            assert all((v - 1).abs().max() == 0 for v in svf.vectors().values())


def test_cloze_cached_reference_equals_a_reference_pass(tiny_llama_dir):
    pytest.importorskip("testtime.rl.logprobs")
    svf, policy = _tiny_svf_policy(tiny_llama_dir, init_noise=0.3)
    env = ClozeEnv(_ToyCloze())
    rollouts, encoded = env.rollouts(policy, _toy_instances(3), num_samples=2, temperature=1.0, seed=0)
    with torch.no_grad(), policy.training() as factored:
        cached = env.reference_output(policy, factored, rollouts, 1.0, encoded)
        again = env.reference_output(policy, factored, rollouts, 1.0, encoded)  # from the cache
        with policy.reference():
            direct = env.policy_output(factored, rollouts, normalize="sum", temperature=1.0, encoded=encoded)
        adapted = env.policy_output(factored, rollouts, normalize="sum", temperature=1.0, encoded=encoded)
    torch.testing.assert_close(cached.logps, direct.logps, rtol=0, atol=1e-6)
    torch.testing.assert_close(again.logps, cached.logps, rtol=0, atol=0)
    assert (adapted.logps - direct.logps).abs().max() > 1e-4  # the noisy z differs from the base


def test_a_step_without_reward_signal_leaves_the_vectors_alone(tiny_llama_dir):
    """Equal rewards under the group baseline give every advantage 0: no update (Adam would otherwise turn
    the KL term's float noise at the reference into a full-size step)."""
    pytest.importorskip("testtime.rl.logprobs")
    from testtime.svf.reinforce import train_step

    svf, policy = _tiny_svf_policy(tiny_llama_dir)
    never = task_from_function(
        "never",
        lambda inst, ans: (0.0, "no", False),
        instances=lambda rng, i: {"prompt": f"question {i}"},
    )
    batch = [Instance(task="never", id=str(i), data={"prompt": f"q {i}"}, reference="x") for i in range(2)]
    env = GenerationEnv(never, max_new_tokens=3)
    config = ReinforceConfig(
        lr=0.05, batch_size=2, num_samples=2, baseline="group", kl_coef=0.05, temperature=1.0
    )
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
    before = {k: v.detach().clone() for k, v in svf.vectors().items()}
    metrics = train_step(policy, env, batch, config, optimizer, 0)
    assert metrics["skipped"] == 1 and metrics["grad_norm"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in svf.vectors().items())
    # with a signal (baseline "none": every reward is -1) the same step does move z
    signal = ReinforceConfig(lr=0.05, batch_size=2, num_samples=2, baseline="none", temperature=1.0)
    metrics = train_step(policy, env, batch, signal, optimizer, 1)
    assert "skipped" not in metrics and metrics["grad_norm"] > 0
    assert any(not torch.equal(before[k], v) for k, v in svf.vectors().items())
