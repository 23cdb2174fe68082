"""A safe evaluator for arithmetic written by a model: exact rationals, a whitelist, hard limits.

Model text is never passed to ``eval`` or ``exec``. The text is length- and depth-checked *before* Python's
parser sees it (deep nesting costs the parser stack), parsed with :func:`ast.parse` in ``eval`` mode, and
then walked by a small interpreter that accepts only

- integer and decimal literals (no complex, no strings, no names, no calls, no attributes, no subscripts);
- the binary operators ``+ - * /`` (and ``**`` only when ``allow_power``), unary ``-`` and ``+``;
- parentheses (they leave no node in the tree).

Values are :class:`fractions.Fraction`, so ``6 / 4 * 2 == 3`` exactly. Limits: the text length, the
parenthesis depth, the node count, the magnitude of every intermediate value, and for powers an integer
exponent of bounded size checked *before* computing, so ``9**9**9**9`` is refused in microseconds.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "ExpressionError",
    "Limits",
    "ParsedExpression",
    "evaluate",
    "normalize_operators",
    "parse_expression",
]


class ExpressionError(ValueError):
    """The text is not an allowed arithmetic expression, or it breaks a limit."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Resource limits for :func:`parse_expression`.

    Attributes:
        max_length: characters of expression text.
        max_depth: parenthesis nesting depth.
        max_nodes: syntax-tree nodes.
        max_digits: decimal digits of any intermediate numerator or denominator.
        allow_power: accept ``**``.
        max_exponent: the largest absolute integer exponent of ``**``.
    """

    max_length: int = 1000
    max_depth: int = 32
    max_nodes: int = 400
    max_digits: int = 120
    allow_power: bool = False
    max_exponent: int = 64


@dataclass(frozen=True, kw_only=True)
class ParsedExpression:
    """An evaluated expression.

    Attributes:
        value: its exact value.
        numbers: the literals in the order written (as Fractions; unary minus is an operator, not part of
            the literal).
    """

    value: Fraction
    numbers: list[Fraction]


_OPERATOR_ALIASES = {
    "\\times": "*",
    "\\cdot": "*",
    "\\div": "/",
    "\\left(": "(",
    "\\right)": ")",
    "×": "*",
    "·": "*",
    "÷": "/",
    "−": "-",
    "–": "-",
    "^": "**",
}
_ALLOWED_CHARS = re.compile(r"^[0-9.+\-*/() \t\n]*$")


def normalize_operators(text: str) -> str:
    """Map common typographic and LaTeX operators (×, ÷, −, ^, ``\\times``, ``\\div``, ``\\cdot``) to Python's."""
    for alias, op in _OPERATOR_ALIASES.items():
        text = text.replace(alias, op)
    return text


def _check_magnitude(value: Fraction, limits: Limits) -> Fraction:
    bound = 10**limits.max_digits
    if abs(value.numerator) >= bound or value.denominator >= bound:
        raise ExpressionError(f"an intermediate value has more than {limits.max_digits} digits")
    return value


def parse_expression(text: str, *, limits: Limits | None = None) -> ParsedExpression:
    """Parse and evaluate an arithmetic expression safely.

    Args:
        text: the expression, e.g. ``"(25 - 5) * 4"``.
        limits: resource limits (default :class:`Limits`).

    Returns:
        The value and the literals used.

    Raises:
        ExpressionError: anything that is not a whitelisted expression, division by zero, or a broken limit.
    """
    limits = limits or Limits()
    if not isinstance(text, str):
        raise ExpressionError("expression must be a string")
    if len(text) > limits.max_length:
        raise ExpressionError(f"expression longer than {limits.max_length} characters")
    text = normalize_operators(text).strip()
    if not text:
        raise ExpressionError("empty expression")
    if not _ALLOWED_CHARS.match(text):
        bad = sorted({c for c in text if not _ALLOWED_CHARS.match(c)})[:5]
        raise ExpressionError(f"characters not allowed in an arithmetic expression: {bad}")
    if "**" in text and not limits.allow_power:
        raise ExpressionError("powers (**) are not allowed")
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
            if depth > limits.max_depth:
                raise ExpressionError(f"parentheses nested deeper than {limits.max_depth}")
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise ExpressionError("unbalanced parentheses")
    if depth != 0:
        raise ExpressionError("unbalanced parentheses")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise ExpressionError(f"not a valid expression: {type(exc).__name__}") from None
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > limits.max_nodes:
        raise ExpressionError(f"expression has more than {limits.max_nodes} syntax nodes")
    numbers: list[Fraction] = []
    try:
        value = _evaluate(tree.body, limits, numbers, 0)
    except RecursionError:
        raise ExpressionError("expression nested too deeply") from None
    return ParsedExpression(value=value, numbers=numbers)


def evaluate(text: str, *, limits: Limits | None = None) -> Fraction:
    """The exact value of a safe arithmetic expression (see :func:`parse_expression`)."""
    return parse_expression(text, limits=limits).value


def _evaluate(node: ast.AST, limits: Limits, numbers: list[Fraction], depth: int) -> Fraction:
    if depth > 4 * limits.max_depth + 200:  # unary chains like - - - - 1 have no parentheses
        raise ExpressionError("expression nested too deeply")
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ExpressionError(f"literal {type(node.value).__name__} not allowed")
        if isinstance(node.value, float):
            if not math.isfinite(node.value):
                raise ExpressionError("number literal too large")
            value = Fraction(repr(node.value))  # the shortest repr of "2.5" or "0.1" is the decimal written
        else:
            if node.value.bit_length() > limits.max_digits * 4:
                raise ExpressionError("number literal too large")
            value = Fraction(node.value)
        numbers.append(_check_magnitude(value, limits))
        return value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _evaluate(node.operand, limits, numbers, depth + 1)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left = _evaluate(node.left, limits, numbers, depth + 1)
        right = _evaluate(node.right, limits, numbers, depth + 1)
        if isinstance(node.op, ast.Add):
            return _check_magnitude(left + right, limits)
        if isinstance(node.op, ast.Sub):
            return _check_magnitude(left - right, limits)
        if isinstance(node.op, ast.Mult):
            return _check_magnitude(left * right, limits)
        if isinstance(node.op, ast.Div):
            if right == 0:
                raise ExpressionError("division by zero")
            return _check_magnitude(left / right, limits)
        if isinstance(node.op, ast.Pow) and limits.allow_power:
            if right.denominator != 1 or abs(right.numerator) > limits.max_exponent:
                raise ExpressionError(f"exponents must be integers of at most {limits.max_exponent} in size")
            if left == 0 and right < 0:
                raise ExpressionError("division by zero")
            # |left|**e has about e * digits(left) digits: refuse before computing.
            digits = max(len(str(abs(left.numerator))), len(str(left.denominator)))
            if digits * abs(right.numerator) > limits.max_digits + 1:
                raise ExpressionError(f"a power has more than {limits.max_digits} digits")
            return _check_magnitude(left ** int(right), limits)
        raise ExpressionError(f"operator {type(node.op).__name__} not allowed")
    raise ExpressionError(f"{type(node).__name__} not allowed in an arithmetic expression")
