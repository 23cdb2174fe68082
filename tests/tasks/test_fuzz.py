"""Hypothesis fuzzing: no parser or verifier raises on arbitrary text, and verdicts stay well formed."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testtime.tasks import Verdict, get_task
from testtime.tasks.arc import extract_choice
from testtime.tasks.arithmetic import extract_expression
from testtime.tasks.parsing import after_answer_marker, extract_json, last_number, parse_clock
from testtime.tasks.safe_math import ExpressionError, parse_expression
from testtime.tasks.travelplanner import parse_plan

# Text that looks a little like answers: fragments of the formats mixed with arbitrary unicode.
FRAGMENTS = [
    "SOLUTION:", "You travel to Nob Hill in 10 minutes and arrive at 9:10AM.", "You wait until 25:99PM.",
    "You meet Alice for 60 minutes from 9:00AM to 10:00AM.", '[{"city": "Paris", "days": "1-3"}]', "{",
    "[", "]", "}", "Monday, 09:00 - 10:00", "<answer>", "</answer>", "(", ")", "**", "9**9**9", "\\boxed{",
    "The answer is (B)", "####", "```python\n", "```", "Day 1:\nCurrent City: from A to B\n", "lantern",
    "Flight Number: F123", "-", ";", ",", "=", "1e309", "0.1", "÷", "×", "\n", "<think>", "</think>", "'",
]  # fmt: skip
answers = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=30)), max_size=25).map("".join)

FAST_TASKS = [
    "meeting-planning", "trip-planning", "calendar-scheduling", "stegpoet", "travelplanner", "countdown",
    "arithmetic", "arc-easy", "arc-challenge", "gsm8k",
]  # fmt: skip


@pytest.mark.parametrize("name", FAST_TASKS)
def test_verifiers_never_raise(name: str) -> None:
    task = get_task(name)
    instance = task.instances(seed=0)[0]

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(answers)
    def check(answer: str) -> None:
        verdict = task.verify(instance, answer)
        assert isinstance(verdict, Verdict) and 0.0 <= verdict.score <= 1.0
        assert isinstance(verdict.feedback, str)

    check()


def test_humaneval_verifier_never_raises() -> None:
    from testtime.tasks.humaneval import HumanEval

    task = HumanEval(cpu_seconds=1, wall_seconds=3.0, memory_mb=512)
    instance = task.instances(seed=0)[0]

    @settings(max_examples=8, deadline=None)
    @given(answers)
    def check(answer: str) -> None:
        verdict = task.verify(instance, answer)
        assert 0.0 <= verdict.score <= 1.0

    check()


@settings(max_examples=300, deadline=None)
@given(answers)
def test_parsers_never_raise(text: str) -> None:
    extract_json(text)
    after_answer_marker(text)
    last_number(text)
    parse_clock(text)
    parse_plan(text)
    extract_choice(text, ["A", "B", "C", "D"], ["a", "b", "c", "d"])
    expression = extract_expression(text)
    if expression is not None:
        with contextlib.suppress(ExpressionError):
            parse_expression(expression)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789+-*/(). ×÷", max_size=60))
def test_safe_parser_raises_only_expression_errors(text: str) -> None:
    with contextlib.suppress(ExpressionError):
        parse_expression(text)
