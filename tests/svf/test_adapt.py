"""Two-pass adaptation: CEM finds a known optimum, ties are broken, mixtures by hand, classification pieces."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from testtime.errors import UserError
from testtime.llm.fake import FakeLLM
from testtime.svf import SVF, SVFConfig, expert_from_svf
from testtime.svf.adapt import (
    OTHER,
    CEMConfig,
    cem,
    classification_task,
    classify_prompt,
    few_shot_adapt,
    mixture,
    parse_category,
)


def test_cem_finds_the_optimum_of_a_quadratic():
    target = torch.tensor([0.2, 0.9, 0.5, 0.05])

    def score(x):
        return -float(((x - target) ** 2).sum()), 0.0

    result = cem(score, 4, CEMConfig(population=32, generations=25, seed=1))
    torch.testing.assert_close(result.best, target, rtol=0, atol=0.03)
    # The best score never gets worse from generation to generation (the best is re-evaluated).
    bests = [h["best"] for h in result.history]
    assert bests == sorted(bests)


def test_cem_breaks_performance_ties_by_the_second_score():
    # Performance is flat (1.0) on the whole box; the tie-break prefers x close to 0.7.
    def score(x):
        return 1.0, -abs(float(x[0]) - 0.7)

    result = cem(score, 1, CEMConfig(population=16, generations=15, seed=0))
    assert abs(float(result.best[0]) - 0.7) < 0.05


def test_cem_config_errors():
    with pytest.raises(UserError):
        CEMConfig(population=1)
    with pytest.raises(UserError):
        CEMConfig(elite_ratio=0.0)
    with pytest.raises(UserError):
        CEMConfig(low=1, high=0)


def test_parse_category():
    cats = ["arc", "math", "code"]
    assert parse_category("This is a Math question (not code)", cats) == "math"
    assert parse_category("OTHER", cats) == OTHER
    assert parse_category("mathematics", cats) is None
    assert parse_category("", cats) is None


def test_prompt_classification_falls_back_to_likelihood():
    fake = FakeLLM(["Kind: math.", "I do not know"])
    # The fake answers the first question in format; the second needs the likelihood fallback.

    calls = []

    def fallback_scorer(context, names):
        from testtime.tasks.scoring import ContinuationScore

        calls.append(names)
        return [ContinuationScore(-1.0 if n == "code" else -5.0, 1) for n in names]

    fake.score_continuations = fallback_scorer  # type: ignore[attr-defined]
    fake.tokenizer = type("T", (), {"chat_template": None})()  # type: ignore[attr-defined]
    out = classify_prompt(fake, ["what is 2+2", "write a function"], ["math", "code"])
    assert out == [("math", "prompt"), ("code", "likelihood")]
    assert calls == [["math", "code"]]


def test_classification_task_instances_and_verify():
    task, instances = classification_task({"arc": ["q1", "q2"], "math": ["q3"]})
    assert [i.data["category"] for i in instances] == ["arc", "arc", "math"]
    assert instances[2].data["answer"] == "B"
    assert task.verify(instances[2], "The answer is (B).").solved
    assert not task.verify(instances[2], "The answer is (A).").solved
    assert task.verify(instances[0], "arc").solved
    assert "q3" in task.cloze_prompt(instances[2]) and "math" in task.cloze_prompt(instances[2])
    with pytest.raises(UserError):
        classification_task({"arc": ["q"]})


def test_mixture_by_hand_and_few_shot_adapt_picks_the_better_expert(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    svf = SVF(model, SVFConfig(cache=False))
    with torch.no_grad():
        for p in svf.z.values():
            p.fill_(2.0)
    good = expert_from_svf(svf, base_model="tiny", task="good")
    svf.reset()
    bad = expert_from_svf(svf, base_model="tiny", task="bad")
    mix = mixture([good, bad], torch.tensor([0.25, 0.5]), svf.names)
    for name in svf.names:
        torch.testing.assert_close(mix[name], torch.full_like(mix[name], 0.25 * 2 + 0.5 * 1))
    relative = mixture([good, bad], torch.tensor([0.25, 0.5]), svf.names, relative=True)
    for name in svf.names:  # 1 + 0.25 (2 - 1) + 0.5 (1 - 1)
        torch.testing.assert_close(relative[name], torch.full_like(relative[name], 1.25))
    per_layer = torch.zeros(2, len(svf.names))
    per_layer[0, 0] = 1.0
    mix = mixture([good, bad], per_layer, svf.names)
    assert float(mix[svf.names[0]][0]) == 2.0 and float(mix[svf.names[1]].abs().max()) == 0.0

    class _Env:
        """Accuracy 1 when the first target's mean multiplier is near 1.6 (a known optimum)."""

        def evaluate(self, policy, shots):
            value = float(svf.effective(svf.names[0]).mean())
            return 1.0 if abs(value - 1.6) < 0.1 else 0.0

    class _Policy:
        pass

    multipliers, result = few_shot_adapt(
        svf, [good, bad], policy=_Policy(), env=_Env(), shots=[object()], tie_break=False,
        config=CEMConfig(population=16, generations=6, seed=0),
    )  # fmt: skip
    assert result.best_score[0] == 1.0
    assert abs(float(multipliers[svf.names[0]].mean()) - 1.6) < 0.1
