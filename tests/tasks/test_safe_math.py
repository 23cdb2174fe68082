"""The safe arithmetic parser: exact values against a reference, and refusal of hostile input."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.tasks.safe_math import ExpressionError, Limits, evaluate, parse_expression


def _tree(draw_ints: st.SearchStrategy[int]) -> st.SearchStrategy[tuple[str, Fraction | None]]:
    """Random expressions with their value computed by a separate naive recursion (None: division by 0)."""
    leaf = draw_ints.map(lambda n: (str(n), Fraction(n)))

    def combine(children: st.SearchStrategy) -> st.SearchStrategy:
        def build(args: tuple) -> tuple[str, Fraction | None]:
            (a, va), op, (b, vb) = args
            if va is None or vb is None:
                return f"({a} {op} {b})", None
            if op == "/" and vb == 0:
                return f"({a} {op} {b})", None
            value = {"+": va + vb, "-": va - vb, "*": va * vb, "/": va / vb if vb else None}[op]
            return f"({a} {op} {b})", value

        return st.tuples(children, st.sampled_from("+-*/"), children).map(build)

    return st.recursive(leaf, combine, max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(_tree(st.integers(0, 1000)))
def test_values_match_a_naive_rational_evaluator(case: tuple[str, Fraction | None]) -> None:
    text, value = case
    if value is None:
        with pytest.raises(ExpressionError, match="division by zero"):
            evaluate(text)
    else:
        assert evaluate(text) == value


def test_precedence_literals_and_aliases() -> None:
    assert evaluate("2 + 3 * 4") == 14
    assert evaluate("(2 + 3) * 4") == 20
    assert evaluate("7 / 2") == Fraction(7, 2)
    assert evaluate("-3 - -2") == -1
    assert evaluate("2.5 * 4") == 10
    assert evaluate("6 × 7 ÷ 3 − 1") == 13
    assert parse_expression("(25 - 5) * 4").numbers == [25, 5, 4]


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('echo pwned')",
        "open('/etc/passwd').read()",
        "(1).__class__",
        "[1, 2][0]",
        "x + 1",
        "lambda: 1",
        "1 if 1 else 2",
        "'a' * 3",
        "1 < 2",
        "1j * 2",
        "2 ** 3",  # powers are off by default
        "1 // 2",
        "5 % 3",
        "",
        "((1)",
    ],
)
def test_rejects_everything_but_arithmetic(text: str) -> None:
    with pytest.raises(ExpressionError):
        evaluate(text)


def test_hostile_inputs_are_refused_within_a_second() -> None:
    hostile = [
        "9**9**9**9",
        "(" * 10_000 + "1" + ")" * 10_000,
        "-" * 10_000 + "1",
        "9" * 5000,
        "1+" * 5000 + "1",
        "99999999999999999999 * " * 40 + "9",
    ]
    for text in hostile:
        for limits in (Limits(), Limits(allow_power=True, max_length=100_000)):
            start = time.perf_counter()
            with pytest.raises(ExpressionError):
                evaluate(text, limits=limits)
            assert time.perf_counter() - start < 1.0, text[:20]


def test_powers_when_allowed_are_bounded_before_computing() -> None:
    power = Limits(allow_power=True)
    assert evaluate("2 ** 10", limits=power) == 1024
    assert evaluate("2 ** -2", limits=power) == Fraction(1, 4)
    with pytest.raises(ExpressionError, match="exponent"):
        evaluate("2 ** 1000", limits=power)
    with pytest.raises(ExpressionError, match="integers"):
        evaluate("2 ** 0.5", limits=power)
    with pytest.raises(ExpressionError, match="digits"):
        evaluate("99999 ** 60", limits=power)


def test_hostile_countdown_answers_run_nothing(tmp_path) -> None:  # noqa: ANN001
    from testtime.tasks import get_task

    marker = tmp_path / "ran"
    task = get_task("countdown")
    instance = task.instances(seed=0)[0]
    for answer in (
        f"<answer>__import__('os').system('touch {marker}')</answer>",
        f"The answer is (lambda: __import__('pathlib').Path('{marker}').touch())()",
        "<answer>9**9**9**9</answer>",
        "<answer>" + "(" * 10_000 + "1" + ")" * 10_000 + "</answer>",
    ):
        start = time.perf_counter()
        verdict = task.verify(instance, answer)
        assert not verdict.solved and verdict.score == 0.0
        assert time.perf_counter() - start < 1.0
    assert not marker.exists()
