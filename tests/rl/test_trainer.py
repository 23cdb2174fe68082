"""The GRPO trainer on a tiny Llama with a toy reward: learning, every parameter moving, gradient
accumulation, resume after a kill, the weight-update contract."""

from __future__ import annotations

import math

import pytest
import torch

from testtime.rl.trainer import GRPOConfig, GRPOTrainer

PROMPTS = ["the cat sat", "a dog ran", "we see the sea", "to be or not"]


def low_token_reward(vocab_size: int):
    """Share of completion tokens in the lower half of the vocabulary: dense and trivially learnable."""

    def low_tokens(prompts, completions, completion_ids, **_):
        return [sum(t < vocab_size // 2 for t in ids) / max(len(ids), 1) for ids in completion_ids]

    return low_tokens


def make(tmp_path, model_dir, *, name="run", on_step=None, **overrides):
    from testtime.llm.loading import load_model

    model, tokenizer = load_model(str(model_dir))
    model.float()
    settings = dict(
        num_generations=8,
        prompts_per_step=2,
        max_completion_length=6,
        learning_rate=3e-3,
        max_steps=4,
        progress=False,
        save_policy=False,
        seed=1,
    )
    settings.update(overrides)
    config = GRPOConfig(**settings)
    dataset = [{"prompt": p, "tag": i} for i, p in enumerate(PROMPTS)]
    trainer = GRPOTrainer(
        model,
        tokenizer,
        [low_token_reward(len(tokenizer))],
        dataset,
        config,
        out_dir=tmp_path / name,
        on_step=on_step,
    )
    return trainer


def params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_short_run_learns_and_moves_every_parameter(tmp_path, tiny_llama_dir):
    trainer = make(tmp_path, tiny_llama_dir, max_steps=12, learning_rate=3e-2)
    before = params(trainer.model)
    history = trainer.train()
    after = params(trainer.model)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged
    first = sum(h["reward"] for h in history[:3]) / 3
    last = sum(h["reward"] for h in history[-3:]) / 3
    assert last > first + 0.2, (first, last)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 12
    for key in (
        "reward",
        "reward_std",
        "rewards/low_tokens",
        "entropy",
        "kl",
        "clip_ratio/low",
        "zero_std_share",
    ):
        assert key in history[-1]


def test_gradient_accumulation_1x8_equals_8x1(tmp_path, tiny_llama_dir):
    finals = []
    for accumulation in (1, 8):
        trainer = make(
            tmp_path,
            tiny_llama_dir,
            name=f"acc{accumulation}",
            prompts_per_step=1,
            max_steps=1,
            optimizer="sgd",
            learning_rate=1.0,
            max_grad_norm=0,
            loss_type="dapo",
            gradient_accumulation_steps=accumulation,
        )
        before = params(trainer.model)
        trainer.train(resume=False)
        finals.append({k: v - before[k] for k, v in params(trainer.model).items()})
    moved = sum(float(d.abs().sum()) for d in finals[0].values())
    assert moved > 0
    for key in finals[0]:
        torch.testing.assert_close(finals[0][key], finals[1][key], atol=1e-6, rtol=1e-4, msg=key)


def test_grpo_loss_accumulates_exactly(tmp_path, tiny_llama_dir):
    finals = []
    for accumulation in (1, 4):
        trainer = make(
            tmp_path,
            tiny_llama_dir,
            name=f"g{accumulation}",
            prompts_per_step=1,
            max_steps=1,
            optimizer="sgd",
            learning_rate=1.0,
            max_grad_norm=0,
            loss_type="grpo",
            gradient_accumulation_steps=accumulation,
        )
        trainer.train(resume=False)
        finals.append(params(trainer.model))
    for key in finals[0]:
        torch.testing.assert_close(finals[0][key], finals[1][key], atol=1e-6, rtol=1e-4, msg=key)


class Killed(Exception):
    pass


def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_llama_dir):
    straight = make(tmp_path, tiny_llama_dir, name="straight", save_every=2)
    straight.train()

    def kill(step, metrics):
        if step == 3:
            raise Killed

    first = make(tmp_path, tiny_llama_dir, name="killed", save_every=2, on_step=kill)
    with pytest.raises(Killed):
        first.train()
    resumed = make(tmp_path, tiny_llama_dir, name="killed", save_every=2)
    resumed.train()
    assert resumed.step_count == 4
    expected = params(straight.model)
    for key, value in params(resumed.model).items():
        torch.testing.assert_close(value, expected[key], atol=1e-6, rtol=1e-5, msg=key)
    assert [h["reward"] for h in resumed.history] == pytest.approx([h["reward"] for h in straight.history])


def test_weight_update_contract_is_used(tmp_path, tiny_llama_dir):
    trainer = make(tmp_path, tiny_llama_dir, max_steps=1)
    calls = []

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def updating_weights(self):
            import contextlib

            @contextlib.contextmanager
            def cm():
                calls.append("enter")
                yield
                calls.append("exit")

            return cm()

    trainer.llm = Spy(trainer.llm)
    trainer.train(resume=False)
    assert calls == ["enter", "exit"]


def test_config_errors():
    with pytest.raises(ValueError, match="num_generations"):
        GRPOConfig(num_generations=1)
    with pytest.raises(ValueError, match="temperature"):
        GRPOConfig(temperature=0)
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(loss_type="ppo")


def test_dynamic_sampling_drops_zero_std_groups_and_refills(tmp_path, tiny_llama_dir):
    def constant_for_cat(prompts, completions, completion_ids, **_):
        return [
            1.0 if p == "the cat sat" else float(len(ids) % 2)
            for p, ids in zip(prompts, completion_ids, strict=True)
        ]

    trainer = make(tmp_path, tiny_llama_dir, prompts_per_step=4, dynamic_sampling=True, max_resample_rounds=3)
    trainer.reward_funcs = [constant_for_cat]
    rollouts, stats = trainer._collect(0)
    groups = {}
    for r in rollouts:
        groups.setdefault(r.group, []).append(r.reward)
    assert all(len(set(values)) > 1 for values in groups.values())
    assert stats["zero_std_groups"] >= 1  # the cat prompt's group was dropped
    assert len(rollouts) % 8 == 0 and len(rollouts) <= 4 * 8


def test_num_iterations_two_steps_per_batch_and_truncation_mask(tmp_path, tiny_llama_dir):
    trainer = make(tmp_path, tiny_llama_dir, num_iterations=2, max_steps=4, mask_truncated_completions=True)
    history = trainer.train(resume=False)
    assert trainer.step_count == 4 and trainer.batches == 2 and len(history) == 2
    assert all(math.isfinite(h["loss"]) for h in history)
