"""Rewards: R1 format (prefilled <think>, repeated blocks, fuzzed), binary accuracy, language, length."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.rl.rewards import (
    accuracy_reward,
    answer_text,
    format_ok,
    format_reward,
    language_consistency_reward,
    length_penalty,
    math_reward,
    overlong_reward,
    resolve_rewards,
)
from testtime.tasks.base import get_task

GOOD = "<think>\n2 + 2 is 4\n</think>\n<answer>\n4\n</answer>"


def test_format_cases():
    assert format_ok(GOOD)
    assert format_ok("  " + GOOD + "\n")
    assert not format_ok(GOOD + GOOD)  # repeated blocks
    assert not format_ok("<think>a</think><think>b</think><answer>c</answer>")
    assert not format_ok("<think>a</think>so<answer>c</answer>")  # text between the blocks
    assert not format_ok("hi " + GOOD)
    assert not format_ok(GOOD + " bye")
    assert not format_ok("<think>a<answer>b</answer></think>")  # nested
    assert not format_ok("<answer>4</answer>")
    # prefilled <think>: the completion starts inside the thinking block
    body = "2 + 2 is 4\n</think>\n<answer>4</answer>"
    assert not format_ok(body) and format_ok(body, prefilled_think=True)
    assert format_ok(GOOD, prefilled_think=True)  # the model repeated the prefilled tag
    reward = format_reward()
    prompts = ["User: 2+2?\nAssistant: <think>", "User: 2+2?\nAssistant:"]
    assert reward(prompts, [body, body]) == [1.0, 0.0]
    assert reward([[{"role": "user", "content": "q"}]], [[{"role": "assistant", "content": GOOD}]]) == [1.0]


# The common regex peers use, which accepts repeated blocks: the fuzz shows where it and ours differ.
_NAIVE = re.compile(r"^<think>.*?</think>\s*<answer>.*?</answer>$", re.DOTALL)
_piece = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "\n", " ", "x", "42", "<thin", ">"])
_free_text = st.text(alphabet=st.sampled_from(list("ab 1\n<>/=")), max_size=12).filter(
    lambda s: not re.search(r"</?(think|answer)>", s)
)


def _reference(text: str) -> bool:
    """An independent scanner: split on tags, check the tag sequence and what lies between."""
    parts = re.split(r"(</?think>|</?answer>)", text)
    tags = parts[1::2]
    gaps = parts[0::2]
    return tags == ["<think>", "</think>", "<answer>", "</answer>"] and all(
        not gaps[i].strip() for i in (0, 2, 4)
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(_piece, max_size=12))
def test_format_fuzz_matches_a_scanner(pieces):
    text = "".join(pieces)
    assert format_ok(text) == _reference(text)
    if format_ok(text):
        assert _NAIVE.match(text.strip())


@settings(max_examples=200, deadline=None)
@given(_free_text, _free_text, st.integers(1, 3), st.booleans())
def test_format_fuzz_wellformed_and_repeated(think, answer, copies, prefill):
    block = f"<think>{think}</think>\n<answer>{answer}</answer>"
    text = block * copies
    completion = text[len("<think>") :] if prefill else text
    assert format_ok(completion, prefilled_think=prefill) == (copies == 1)
    if copies > 1:
        assert _NAIVE.match(text)  # the naive regex is fooled by repeated blocks; ours is not
    assert answer_text(text) == answer.strip()


def test_accuracy_is_binary_by_default_and_graded_on_request():
    task = get_task("countdown")
    instance = task.instances(seed=0, n=1, num_numbers=3, max_number=20)[0]
    partial = "Let me use " + " and ".join(str(n) for n in instance.data["numbers"][:2])
    verdict = task.verify(instance, partial)
    assert not verdict.solved
    binary = accuracy_reward(task)
    graded = accuracy_reward(task, graded=True)
    col = {"instance": [instance.to_dict(), instance.to_dict()]}
    reference = instance.reference
    assert binary(None, [partial, f"<think>hm</think><answer>{reference}</answer>"], **col) == [0.0, 1.0]
    assert graded(None, [partial], instance=[instance])[0] == pytest.approx(verdict.score)
    with pytest.raises(ValueError, match="instance"):
        binary(None, ["x"])


def test_math_reward_uses_math_verify():
    reward = math_reward()
    out = reward(
        None, ["so \\boxed{1,234}", "<answer>1234.0</answer>", "12"], answer=["1234", "1234", "1234"]
    )
    assert out == [1.0, 1.0, 0.0]


def test_language_and_length_rewards():
    lang = language_consistency_reward("en")
    assert lang(None, ["<think>we add 2 and 2</think><answer>4</answer>"]) == [1.0]
    assert lang(None, ["<think>we 加 them</think>"]) == pytest.approx([2 / 3])
    ids = {"completion_ids": [[1] * 5, [1] * 9, [1] * 12]}
    over = overlong_reward(max_completion_length=10, cache_length=4)
    assert over(None, ["a", "b", "c"], **ids) == pytest.approx([0.0, -0.75, -1.0])
    assert length_penalty(target_tokens=8, coefficient=0.5)(None, ["a", "b", "c"], **ids) == pytest.approx(
        [0.0, -0.5 / 8, -0.5 * 4 / 8]
    )
    with pytest.raises(ValueError, match="completion_ids"):
        over(None, ["a"])


def test_resolve_rewards_errors():
    task = get_task("arithmetic")
    assert len(resolve_rewards("accuracy,format", task=task)) == 2
    with pytest.raises(ValueError, match="unknown reward"):
        resolve_rewards("acc", task=task)
    with pytest.raises(ValueError, match="needs a task"):
        resolve_rewards("accuracy")


def test_tag_count_partial_credit():
    from testtime.rl.rewards import tag_count_reward

    reward = tag_count_reward()
    assert reward(None, [GOOD, "<think>a</think> 4", GOOD + GOOD, "nothing"]) == [1.0, 0.5, 0.0, 0.0]
    assert reward(["Assistant: <think>"], ["a</think><answer>4</answer>"]) == [1.0]
