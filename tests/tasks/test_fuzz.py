"""Hypothesis fuzzing: no parser or verifier raises on arbitrary text, and verdicts stay well formed.

Every registered task gets arbitrary text, huge numbers (past Python's int-from-string limit), digits of
other scripts, binary noise and deep nesting; ``verify`` must return a :class:`Verdict` within a few
seconds without its guard having to catch an exception (``details["error"]``). More examples run under
the ``slow`` marker.
"""

from __future__ import annotations

import contextlib
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testtime.tasks import Verdict, get_task, list_tasks
from testtime.tasks.arc import extract_choice
from testtime.tasks.arithmetic import extract_expression
from testtime.tasks.parsing import after_answer_marker, extract_json, last_number, parse_clock
from testtime.tasks.safe_math import ExpressionError, parse_expression
from testtime.tasks.travelplanner import parse_plan

BUILTIN = list_tasks(include_user=False)  # tests elsewhere register their own

# Text that looks a little like answers: fragments of the formats mixed with arbitrary unicode.
FRAGMENTS = [
    "SOLUTION:", "You travel to Nob Hill in 10 minutes and arrive at 9:10AM.", "You wait until 25:99PM.",
    "You meet Alice for 60 minutes from 9:00AM to 10:00AM.", '[{"city": "Paris", "days": "1-3"}]', "{",
    "[", "]", "}", "Monday, 09:00 - 10:00", "<answer>", "</answer>", "(", ")", "**", "9**9**9", "\\boxed{",
    "The answer is (B)", "####", "```python\n", "```", "Day 1:\nCurrent City: from A to B\n", "lantern",
    "Flight Number: F123", "-", ";", ",", "=", "1e309", "0.1", "÷", "×", "\n", "<think>", "</think>", "'",
]  # fmt: skip
answers = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=30)), max_size=25).map("".join)
huge_numbers = st.integers(4_000, 6_000).map(lambda n: "9" * n)
other_digits = st.text(alphabet=st.characters(whitelist_categories=["Nd"]), min_size=1, max_size=12)
nesting = st.integers(100, 100_000).flatmap(lambda n: st.sampled_from(["[" * n, "(" * n, "{" * n, "[{" * n]))
binary = st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
hostile = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), huge_numbers, other_digits, nesting, binary, st.text(max_size=20)),
    max_size=8,
).map("".join)


def _check_total(task, instance, answer: str) -> None:  # noqa: ANN001
    start = time.perf_counter()
    verdict = task.verify(instance, answer)
    assert time.perf_counter() - start < 10.0
    assert isinstance(verdict, Verdict) and 0.0 <= verdict.score <= 1.0
    assert isinstance(verdict.feedback, str) and len(verdict.feedback) <= 2_000
    assert "error" not in verdict.details, verdict.details


def _fuzz(name: str, examples: int) -> None:
    if name == "humaneval":
        from testtime.tasks.humaneval import HumanEval

        task = HumanEval(cpu_seconds=1, wall_seconds=3.0, memory_mb=512)
        examples = max(2, examples // 10)
    else:
        task = get_task(name)
    instance = task.instances(seed=0)[0]

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(answers, hostile))
    def check(answer: str) -> None:
        _check_total(task, instance, answer)

    check()


@pytest.mark.parametrize("name", BUILTIN)
def test_every_task_verifies_any_text_in_bounded_time(name: str) -> None:
    _fuzz(name, 25)


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN)
def test_every_task_verifies_any_text_in_bounded_time_long(name: str) -> None:
    _fuzz(name, 400)


@pytest.mark.parametrize("name", [n for n in BUILTIN if n != "humaneval"])
def test_fixed_hostile_inputs(name: str) -> None:
    task = get_task(name)
    instance = task.instances(seed=0)[0]
    big = "9" * 5_000
    for answer in [
        big,
        f"SOLUTION: You travel to Nob Hill in {big} minutes and arrive at 9:10AM. You meet Alice for {big} minutes.",
        f'[{{"city": "Paris", "days": "1-{big}"}}]',
        f'[{{"city": "Paris", "start": {big}, "end": 3}}]',
        f"<answer>{big} + 1</answer>",
        f"The answer is {big}. \\boxed{{{big}}}",
        "[" * 200_000,
        "x" * 50_000_000,
        "\x00\xff\ud7ff" * 1000,
    ]:
        _check_total(task, instance, answer)
    assert task.verify(instance, None).score == 0.0  # type: ignore[arg-type]
    assert task.verify(instance, b"\xff\xfe").score == 0.0  # type: ignore[arg-type]


def _to_script(text: str, zero: str) -> str:
    return "".join(chr(ord(zero) + int(c)) if c.isdigit() and c.isascii() else c for c in text)


@pytest.mark.parametrize(
    "name", ["countdown", "arithmetic", "gsm8k", "meeting-planning", "trip-planning", "calendar-scheduling"]
)
def test_every_numeric_task_reads_other_scripts_digits_alike(name: str) -> None:
    task = get_task(name)
    instance = task.instances(seed=0)[0]
    reference = instance.reference if name != "gsm8k" else f"The answer is {instance.data['answer']}."
    assert task.verify(instance, reference).solved
    for zero in ("\u0660", "\u0966", "\uff10"):  # Arabic-Indic, Devanagari, fullwidth
        assert task.verify(instance, _to_script(reference, zero)).solved, zero
    if name in ("countdown", "arithmetic"):  # superscripts are not decimal digits: not read as numbers
        superscript = reference.translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
        assert not task.verify(instance, superscript).solved


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
