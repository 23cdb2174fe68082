"""Cold-start traces verify; SFT lowers the loss; rejection sampling keeps only verified answers;
pass@k and Wilson intervals against direct computations; evaluate's figures on a scripted LLM."""

from __future__ import annotations

import itertools
import math

import pytest

from testtime.llm.fake import FakeLLM
from testtime.rl.eval import evaluate, pass_at_k, wilson_interval
from testtime.rl.rewards import answer_text, format_ok
from testtime.rl.sft import SFTConfig, cold_start_examples, prompt_for, rejection_sample, sft_train
from testtime.tasks.base import Instance, get_task


@pytest.mark.parametrize("template", ["r1", "r1-zero"])
def test_cold_start_traces_are_correct_and_well_formed(template):
    task = get_task("arithmetic")
    rows = cold_start_examples(task, n=20, seed=0, template=template, digits=2, terms=3)
    for row in rows:
        instance = Instance.from_dict(row["instance"])
        assert task.verify(instance, answer_text(row["completion"])).solved, row
        assert format_ok(row["completion"], prefilled_think=template == "r1-zero")
    gsm = cold_start_examples(get_task("gsm8k"), n=3, seed=0)
    assert all(
        get_task("gsm8k").verify(Instance.from_dict(r["instance"]), answer_text(r["completion"])).solved
        for r in gsm
    )
    countdown = get_task("countdown")
    for row in cold_start_examples(countdown, n=3, seed=0, num_numbers=3, max_number=20):
        assert countdown.verify(Instance.from_dict(row["instance"]), answer_text(row["completion"])).solved
    with pytest.raises(ValueError, match="cold-start"):
        cold_start_examples(get_task("travelplanner"), n=1, seed=0)


def test_sft_lowers_the_loss(tiny_llama_dir, tmp_path):
    from testtime.llm.loading import load_model

    model, tokenizer = load_model(str(tiny_llama_dir))
    rows = [{"prompt": "the cat", "completion": " sat on the mat"}] * 4
    history = sft_train(
        model.float(),
        tokenizer,
        rows,
        SFTConfig(learning_rate=1e-2, max_steps=15, batch_size=4, progress=False),
        out_dir=tmp_path,
    )
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert (tmp_path / "policy" / "config.json").is_file() and (tmp_path / "metrics.jsonl").is_file()


def _answers(text: str, index: int) -> str:
    """Right on even samples (well-formed), wrong on odd ones, for arithmetic prompts."""
    expression = text.split("Compute ", 1)[1].split(" (usual", 1)[0]
    value = eval(expression)  # noqa: S307 - a generated arithmetic expression in a test
    return f"<think>work</think><answer>{value if index % 2 == 0 else value + 1}</answer>"


def test_rejection_sampling_keeps_only_verified():
    task = get_task("arithmetic")
    instances = task.instances("train", seed=0, n=5, digits=1, terms=2)
    rows, stats = rejection_sample(
        FakeLLM(script=_answers), task, instances, num_samples=4, per_instance=None
    )
    assert stats == {
        "sampled": 20.0,
        "solved": 10.0,
        "kept": 5.0,
        "instances_solved": 5.0,
    }  # duplicates dropped
    for row in rows:
        assert task.verify(Instance.from_dict(row["instance"]), answer_text(row["completion"])).solved
        assert row["prompt"] == prompt_for(task, Instance.from_dict(row["instance"]), "chat")


def test_pass_at_k_equals_enumeration():
    # pass@k = P(at least one correct among k drawn without replacement from n with c correct)
    for n, c, k in [(5, 2, 2), (6, 0, 3), (4, 4, 1), (7, 3, 4), (5, 1, 5)]:
        draws = list(itertools.combinations(range(n), k))
        expected = sum(any(i < c for i in draw) for draw in draws) / len(draws)
        assert pass_at_k(n, c, k) == pytest.approx(expected)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_wilson_interval_by_hand():
    low, high = wilson_interval(8, 10)
    z = 1.959964
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 0) == (0.0, 1.0)


def test_evaluate_on_a_scripted_llm(tmp_path):
    task = get_task("arithmetic")
    instances = task.instances("test", seed=0, n=4, digits=1, terms=2)
    result = evaluate(FakeLLM(script=_answers), task, instances, k=2, seeds=[0, 1], out=tmp_path)
    assert result.pass1_greedy == 1.0  # greedy = index 0 = right
    assert result.mean_at_k == 0.5 and result.pass_at_k == 1.0
    assert result.per_seed_mean_at_k == [0.5, 0.5]
    assert result.mean_at_k_ci == pytest.approx(wilson_interval(8, 16))
    lines = (tmp_path / "completions.jsonl").read_text().splitlines()
    assert len(lines) == 4 + 4 * 2 * 2
