"""Tolerant extraction of answers from model text: JSON plans, final numbers, marked answers.

Every function here accepts arbitrary text and returns None (or an empty result) instead of raising.
Inputs are truncated to :data:`MAX_TEXT` characters first, so a pathological answer costs bounded time.
"""

from __future__ import annotations

import json
import re
import unicodedata
from fractions import Fraction
from typing import Any

__all__ = [
    "MAX_TEXT",
    "after_answer_marker",
    "excerpt",
    "extract_json",
    "hedged",
    "last_number",
    "normalize_digits",
    "parse_clock",
    "strip_thinking",
]

MAX_TEXT = 50_000  # characters of an answer that any parser looks at (the end of it: answers come last)
_OTHER_DIGIT = re.compile(r"(?![0-9])\d")  # a decimal digit (Unicode category Nd) that is not ASCII

_FENCE = re.compile(r"```(?:json|JSON|python)?\s*\n?(.*?)```", re.DOTALL)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_MARKER = re.compile(
    r"(?:final answer|the answer is|answer\s*:|answer is|solution\s*:)\s*[:=]?\s*", re.IGNORECASE
)
_CLOCK = re.compile(r"^\s*(\d{1,2})\s*:\s*(\d{2})\s*(am|pm|AM|PM|a\.m\.|p\.m\.)?\s*$")


def strip_thinking(text: str) -> str:
    """Drop a leading ``<think>...</think>`` block (R1-style reasoning); keep at most the last MAX_TEXT
    characters of what follows (a final answer comes at the end)."""
    if not isinstance(text, str):
        return ""
    end = text.rfind("</think>")
    if end >= 0:
        text = text[end + len("</think>") :]
    return text[-MAX_TEXT:]


def normalize_digits(text: str) -> str:
    """Every decimal digit of any script (Unicode category Nd: ``٤``, ``४``, ``４`` ...) as its ASCII digit.

    The numeric tasks all read numbers after this, so ``٤٣٧`` means 437 everywhere; other digit-like
    characters (superscripts, circled numbers) are not decimal digits and stay as they are.
    """
    if text.isascii():
        return text
    return _OTHER_DIGIT.sub(lambda m: str(unicodedata.decimal(m.group(), 0)), text)


def excerpt(text: str, limit: int = 60) -> str:
    """At most ``limit`` characters of ``text`` for feedback (the middle elided)."""
    text = str(text)
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def extract_json(text: str, *, want: type | tuple[type, ...] = (dict, list), max_starts: int = 200) -> Any:
    """The first JSON value of the wanted type in ``text`` (fenced code blocks first), or None.

    Args:
        text: model output.
        want: accepted Python types of the decoded value.
        max_starts: at most this many ``{``/``[`` positions are tried.
    """
    text = strip_thinking(text)
    decoder = json.JSONDecoder()
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        starts = [i for i, c in enumerate(candidate) if c in "{["][:max_starts]
        for start in starts:
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except (ValueError, RecursionError):
                continue
            if isinstance(value, want):
                return value
    return None


def after_answer_marker(text: str) -> str:
    """The text after the last "answer is" / "Answer:" / ``\\boxed{...}`` marker, or the last non-empty
    line; at most one line."""
    text = strip_thinking(text)
    boxed = text.rfind("\\boxed{")
    if boxed >= 0:
        start = boxed + len("\\boxed{")
        depth, end = 1, start
        while end < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        return text[start : end - 1 if depth == 0 else end].strip()
    markers = list(_MARKER.finditer(text))
    if markers:
        rest = text[markers[-1].end() :].strip()
        return rest.splitlines()[0].strip() if rest else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (commas removed, e.g. ``"1,234"`` -> ``"1234"``), or None."""
    found = _NUMBER.findall(strip_thinking(text))
    if not found:
        return None
    return found[-1].replace(",", "").rstrip(".")


def _value(number: str) -> object:
    try:
        return Fraction(number.replace(",", "").rstrip("."))
    except (ValueError, ZeroDivisionError):
        return number


_FRACTION = re.compile(r"\s*-?\s*(?:\\[dt]?frac\{[^{}]*\}\{[^{}]*\}|[\d,.]+\s*/\s*[\d,.]+)\s*\.?\s*")
_CHOICE = re.compile(r"\bor\b|\beither\b|\\lor|\\vee|∨|\bmaybe\b|\bperhaps\b|\bpossibly\b", re.IGNORECASE)
_RESULT_AT_END = re.compile(r"=\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)[^\d=]*$")


def hedged(text: str) -> tuple[str, str] | None:
    """The first and last numbers of an answer's marked final answer (after "the answer is", in
    ``\\boxed{}``; see :func:`after_answer_marker`) when they differ ("436 or 437", "15, 16",
    ``15 \\lor 16``): an answer that states several results. None when they agree, when the segment ends
    in a worked result ("598 + 100 - 261 = 437 apples.", whose last number is what it states), or when it is
    one fraction. Without a marker the last line is read, and counts as a hedge only with a word of choice
    ("or", "either", ``\\lor``, "maybe"): a last line of prose may hold several numbers."""
    stripped = strip_thinking(text)
    segment = after_answer_marker(stripped)
    if "\\boxed{" not in stripped and not _MARKER.search(stripped) and not _CHOICE.search(segment):
        return None
    found = _NUMBER.findall(segment[-10_000:])
    if len(found) < 2 or _value(found[0]) == _value(found[-1]):
        return None
    if _RESULT_AT_END.search(segment[-200:]):
        return None
    if len(found) == 2 and _FRACTION.fullmatch(segment):  # one number written as a fraction
        return None
    return found[0].replace(",", "").rstrip("."), found[-1].replace(",", "").rstrip(".")


def parse_clock(text: Any) -> int | None:
    """Minutes after midnight of ``"9:30"``, ``"9:30AM"``, ``"1:05 pm"``; None if not a time."""
    if not isinstance(text, str) or len(text) > 20:
        return None
    match = _CLOCK.match(text)
    if not match:
        return None
    hour, minute, half = int(match.group(1)), int(match.group(2)), (match.group(3) or "").lower()
    if minute > 59:
        return None
    if half:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if half.startswith("p") else 0)
    elif hour > 23:
        return None
    return hour * 60 + minute
