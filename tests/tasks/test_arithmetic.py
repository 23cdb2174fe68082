"""Countdown and arithmetic: references verify, the exhaustive solver agrees, wrong answers are named."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest

from testtime.tasks import get_task
from testtime.tasks.arithmetic import extract_expression, solve_countdown


@pytest.mark.parametrize("knobs", [{}, {"num_numbers": 3, "max_number": 20}, {"num_numbers": 5}])
def test_countdown_reference_and_solver_solutions_verify(knobs: dict[str, int]) -> None:
    task = get_task("countdown")
    for instance in task.instances(seed=11, n=15, **knobs):
        assert task.verify(instance, instance.reference).solved
        found = solve_countdown(instance.data["numbers"], instance.data["target"], max_solutions=3)
        assert found, "every generated instance is solvable"
        for expression in found:
            assert task.verify(instance, f"<answer>{expression}</answer>").solved


def _reachable_naive(numbers: list[int]) -> set[Fraction]:
    """Every value reachable with + - * / over ordered pairs of sub-results: an independent reference."""
    results: dict[frozenset[int], set[Fraction]] = {}
    indices = range(len(numbers))
    for size in range(1, len(numbers) + 1):
        for subset in itertools.combinations(indices, size):
            key = frozenset(subset)
            if size == 1:
                results[key] = {Fraction(numbers[subset[0]])}
                continue
            values: set[Fraction] = set()
            for k in range(1, size):
                for left in itertools.combinations(subset, k):
                    right = key - set(left)
                    for a in results[frozenset(left)]:
                        for b in results[right]:
                            values |= {a + b, a - b, a * b}
                            if b:
                                values.add(a / b)
            results[key] = values
    return set().union(*results.values())


def test_countdown_solver_is_exhaustive() -> None:
    numbers = [3, 7, 8, 25]
    reachable = _reachable_naive(numbers)
    for target in range(1, 120):
        assert bool(solve_countdown(numbers, target)) == (Fraction(target) in reachable), target


def test_countdown_rejects_misused_numbers_with_specific_feedback() -> None:
    task = get_task("countdown")
    instance = task.instances(seed=1)[0]  # numbers [8, 45, 1, 10], target 47
    assert instance.data == {"numbers": [8, 45, 1, 10], "target": 47}
    cases = {
        "<answer>45 + 45 - 43</answer>": "45 is used 2 times",
        "<answer>50 - 3</answer>": "50 is not one of the given numbers",
        "<answer>45 + 8</answer>": "too high",
        "<answer>45 / 0</answer>": "division by zero",
        "<answer>45 ** 1</answer>": "powers",
        "I give up": "No arithmetic expression",
    }
    for answer, phrase in cases.items():
        verdict = task.verify(instance, answer)
        assert not verdict.solved and phrase in verdict.feedback, (answer, verdict.feedback)
    close, far = (
        task.verify(instance, "<answer>45 + 1</answer>"),
        task.verify(instance, "<answer>8 + 1</answer>"),
    )
    assert 0.1 < far.score < close.score < 0.5


def test_expression_extraction() -> None:
    assert extract_expression("so (25-5)*4 = 80") == "(25-5)*4"
    assert extract_expression("<answer>1 + 2</answer> then 3*3") == "1 + 2"
    assert extract_expression("The answer is 7 × 6.") == "7 * 6"
    assert extract_expression("no numbers here") is None


def test_arithmetic_gold_and_wrong_answers() -> None:
    task = get_task("arithmetic")
    for instance in task.instances(seed=2, n=10, digits=5, terms=4):
        gold = instance.data["answer"]
        assert gold == eval(instance.data["expression"])  # trusted, generated text: the reference
        assert task.verify(instance, instance.reference).solved
        assert task.verify(instance, f"Step... so the result is {gold:,}").solved
        wrong = task.verify(instance, f"The answer is {gold + 1}.")
        assert not wrong.solved and "too high" in wrong.feedback


def test_several_results_are_a_hedge_but_worked_results_are_not() -> None:
    from testtime.tasks import get_task

    task = get_task("arithmetic")
    instance = task.instances(seed=0)[0]
    expression, gold = instance.data["expression"], instance.data["answer"]
    for answer in (
        f"The answer is {gold}.",
        f"The answer is {expression} = {gold}.",
        f"The answer is {gold} ({expression} = {gold}).",
        f"so {expression} = {gold} in 2 steps, {gold}",
    ):
        assert task.verify(instance, answer).solved, answer
    for answer in (
        f"The answer is {gold - 1} or {gold}.",
        f"The answer is {gold + 1}, {gold}",
        f"{gold - 1} or {gold}",
        f"\\boxed{{{gold} \\lor 0}}",
    ):
        verdict = task.verify(instance, answer)
        assert verdict.score == 0.0 and "several results" in verdict.feedback, answer
    countdown = get_task("countdown")
    problem = countdown.instances(seed=0)[0]
    expr = problem.reference.split("=")[0]
    assert countdown.verify(problem, f"<answer>{expr} = {problem.data['target']}</answer>").solved
    wrong = countdown.verify(problem, f"<answer>{expr} = {problem.data['target'] + 1}</answer>")
    assert not wrong.solved and "states" in wrong.feedback
