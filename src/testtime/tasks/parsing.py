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
    "find_json",
    "hedged",
    "last_number",
    "normalize_digits",
    "normalize_numbers",
    "parse_clock",
    "read_number",
    "strip_thinking",
]

MAX_TEXT = 50_000  # characters of an answer that any parser looks at (the end of it: answers come last)
_OTHER_DIGIT = re.compile(r"(?![0-9])\d")  # a decimal digit (Unicode category Nd) that is not ASCII

_FENCE = re.compile(r"```(?:json|JSON|python)?\s*\n?(.*?)```", re.DOTALL)
# A number token: digits with commas inside (read_number accepts commas only as thousands separators), a
# decimal part, an optional "/ denominator", and any superscript digits or vulgar fraction glued to it (so
# "437²" and "437½" stay one token, which is not 437).
_GLUED = "\u00b2\u00b3\u00b9\u2070-\u2079\u00bc-\u00be\u2150-\u215e"
# (a hexadecimal "0x1b5" and an exponent "4.37e2" are kept whole too: not the digits they start with)
_DIGITS = r"(?:0[xX][0-9a-fA-F]+|\d(?:[\d,]*\d)?(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_NUMBER = re.compile(rf"-?{_DIGITS}(?:[{_GLUED}]+)?(?:\s*/\s*-?{_DIGITS}(?:[{_GLUED}]+)?)?")
_PLAIN = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")
_LATEX_FRACTION = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d,.]+)\s*\}\s*\{\s*(-?[\d,.]+)\s*\}")
_MINUS = re.compile("(?<![\\d\u2012\u2013\u2212\ufe63\uff0d])[\u2012\u2013\u2212\ufe63\uff0d](?=\\d)")
_SIGN_HEDGE = re.compile(r"(?:±|∓|\+\s*/\s*-|\\pm|\\mp|plus or minus)\s*\$?\s*$", re.IGNORECASE)
_GROUP_SPACE = re.compile("(?<=\\d)[\u00a0\u2009\u202f](?=\\d)")
_INVISIBLE = re.compile("[\u00ad\u200b-\u200d\u2060\ufeff]")  # soft hyphen, zero-width characters
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
    """Every decimal digit of any script (Unicode category Nd: ``٤``, ``४``, ``４`` ...) as its ASCII digit,
    and invisible characters (zero-width spaces and joiners, word joiner, byte-order mark, soft hyphen)
    removed.

    The numeric tasks all read answers after this, so ``٤٣٧`` means 437 everywhere and ``4\u200b37`` or
    ``o\u200br`` read as a reader sees them (``437``, ``or``); other digit-like characters (superscripts,
    circled numbers) are not decimal digits and stay as they are.
    """
    if text.isascii():
        return text
    text = _INVISIBLE.sub("", text)
    return _OTHER_DIGIT.sub(lambda m: str(unicodedata.decimal(m.group(), 0)), text)


def excerpt(text: str, limit: int = 60) -> str:
    """At most ``limit`` characters of ``text`` for feedback (the middle elided)."""
    text = str(text)
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


class _RepeatedKey(Exception):
    """A JSON object names one key twice."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise _RepeatedKey
    return value


def find_json(
    text: str, *, want: type | tuple[type, ...] = (dict, list), max_starts: int = 200
) -> tuple[Any, bool]:
    """``(value, repeated)``: the first JSON value of the wanted type in ``text`` (fenced code blocks first)
    or None, and whether a JSON text found on the way names a key twice in one object.

    An object with a repeated key (``{"city": "Rome", "city": "Paris"}``) states two values for one field;
    Python's decoder would silently keep the last, so the search stops there with ``(None, True)``.

    Args:
        text: model output.
        want: accepted Python types of the decoded value.
        max_starts: at most this many ``{``/``[`` positions are tried.
    """
    text = strip_thinking(text)
    decoder = json.JSONDecoder(object_pairs_hook=_unique_pairs)
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        starts = [i for i, c in enumerate(candidate) if c in "{["][:max_starts]
        for start in starts:
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except _RepeatedKey:
                return None, True
            except (ValueError, RecursionError):
                continue
            if isinstance(value, want):
                return value, False
    return None, False


def extract_json(text: str, *, want: type | tuple[type, ...] = (dict, list), max_starts: int = 200) -> Any:
    """The first JSON value of the wanted type in ``text`` (fenced code blocks first), or None; also None
    when an object on the way repeats a key (see :func:`find_json`).

    Args:
        text: model output.
        want: accepted Python types of the decoded value.
        max_starts: at most this many ``{``/``[`` positions are tried.
    """
    value, repeated = find_json(text, want=want, max_starts=max_starts)
    return None if repeated else value


def _last_boxed(text: str) -> str | None:
    """The content of the last outermost ``\\boxed{...}`` (a box inside another box is part of it:
    ``\\boxed{436 \\boxed{437}}`` reads as ``436 \\boxed{437}``), or None."""
    found = None
    at = text.find("\\boxed{")
    while at >= 0:
        start = end = at + len("\\boxed{")
        depth = 1
        while end < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        found = text[start : end - 1 if depth == 0 else end]
        at = text.find("\\boxed{", end)
    return found


def after_answer_marker(text: str) -> str:
    """The text after the last "answer is" / "Answer:" / ``\\boxed{...}`` marker (the last outermost box),
    or the last non-empty line; at most one line."""
    text = strip_thinking(text)
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    markers = list(_MARKER.finditer(text))
    if markers:
        rest = text[markers[-1].end() :].strip()
        return rest.splitlines()[0].strip() if rest else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def normalize_numbers(text: str) -> str:
    """``text`` with a minus-sign variant before a digit (``−``, ``－``, ``–``) as ``-``, a no-break or thin
    space between digits (a typographic thousands separator, ``1\u00a0234``) as a comma (so the thousands
    rule applies to it) and ``\\frac{a}{b}`` as ``a/b``."""
    if not text.isascii():
        text = _MINUS.sub("-", text)
        text = _GROUP_SPACE.sub(",", text)
    if "frac" in text:
        text = _LATEX_FRACTION.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)
    return text


def read_number(token: str) -> Fraction | None:
    """The value of one number token (``"1,234"``, ``"-2.5"``, ``"3/4"``), or None when it is not one number.

    Commas are read only as thousands separators (``"4,370"``, ``"1,234,567"``): ``"4,37"`` (a decimal
    comma, or a malformed group) and ``"1,2345"`` are no number, never 437 or 12345. A number with a
    superscript or a vulgar fraction glued to it (``"437²"``, ``"437½"``) is not that number either, and
    neither are ``"4.37e2"`` or ``"0x1b5"`` (other notations: no integer answer needs them).
    """
    parts = re.sub(r"\s+", "", token).split("/")
    if len(parts) > 2 or not all(_PLAIN.fullmatch(part) for part in parts):
        return None
    try:
        return Fraction("/".join(part.replace(",", "") for part in parts))
    except (ValueError, ZeroDivisionError):
        return None


def _token(number: str) -> str:
    """A number token as :func:`last_number` returns it: without commas and spaces when it reads as one
    number, else as written (so that reading it fails)."""
    if read_number(number) is None:
        return number
    return re.sub(r"\s+", "", number).replace(",", "")


def last_number(text: str) -> str | None:
    """The last number written in ``text``, or None.

    Thousands commas are removed (``"1,234"`` -> ``"1234"``), a minus-sign variant is ``-`` and a fraction
    stays one number (``"3/4"``, ``\\frac{3}{4}`` -> ``"3/4"``); a token that is not one number
    (``"4,37"``, ``"437½"``) comes back as written, so that reading it fails (:func:`read_number`).
    """
    found = _NUMBER.findall(normalize_numbers(strip_thinking(text)))
    if not found:
        return None
    return _token(found[-1])


def _value(number: str) -> object:
    value = read_number(number)
    return number if value is None else value


_CHOICE = re.compile(r"\bor\b|\beither\b|\\lor|\\vee|∨|\bmaybe\b|\bperhaps\b|\bpossibly\b", re.IGNORECASE)
_RESULT_AT_END = re.compile(r"=\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)[^\d=]*$")


def hedged(text: str) -> tuple[str, str] | None:
    """The first and last numbers of an answer's marked final answer (after "the answer is", in
    ``\\boxed{}``; see :func:`after_answer_marker`) when they differ ("436 or 437", "15, 16",
    ``15 \\lor 16``): an answer that states several results. None when they agree, when the segment ends
    in a worked result ("598 + 100 - 261 = 437 apples.", whose last number is what it states), or when it is
    one fraction ("3/4", ``\\frac{3}{4}``: one number). Without a marker the last line is read, and counts
    as a hedge only with a word of choice ("or", "either", ``\\lor``, "maybe"): a last line of prose may
    hold several numbers. A final number after a plus-or-minus sign (``±437``, ``\\pm 437``, ``+/- 437``)
    states two results, marker or not."""
    stripped = strip_thinking(text)
    segment = normalize_numbers(after_answer_marker(stripped))
    matches = list(_NUMBER.finditer(segment[-10_000:]))
    if matches and _SIGN_HEDGE.search(
        segment[-10_000:][max(0, matches[-1].start() - 20) : matches[-1].start()]
    ):
        last = _token(matches[-1].group()).lstrip("-")
        return f"-{last}", f"+{last}"
    if "\\boxed{" not in stripped and not _MARKER.search(stripped) and not _CHOICE.search(segment):
        return None
    found = [m.group() for m in matches]
    if len(found) < 2 or _value(found[0]) == _value(found[-1]):
        return None
    if _RESULT_AT_END.search(segment[-200:]):
        return None
    return _token(found[0]), _token(found[-1])


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
