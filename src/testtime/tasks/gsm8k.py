"""GSM8K (Cobbe et al. 2021): grade-school math word problems, answers checked with math-verify.

Splits: ``test`` (1,319, the default) and ``train`` (7,473), the data set's own (no question appears in
both), so RL can train on train and report on test. The gold answer is the number after ``#### ``. A model's final answer is extracted by math-verify
(``\\boxed{}``, "the answer is", or the last number) from the last 4,000 characters of its text; if
math-verify is not installed or finds nothing, the last number in the text is compared exactly. math-verify's
signal-based timeouts only work in the main thread, so they are switched off elsewhere (RL workers).
Departure: math-verify accepts "16 or 15" or ``\\boxed{15 \\lor 16}`` when either number matches; here a
final answer whose first and last numbers differ scores 0 (:func:`testtime.tasks.parsing.hedged`).
"""

from __future__ import annotations

import functools
import gzip
import json
import threading
from collections.abc import Mapping
from importlib import resources
from typing import Any

from testtime.tasks.base import Instance, Task, Verdict, seeded_subset
from testtime.tasks.parsing import (
    after_answer_marker,
    excerpt,
    hedged,
    last_number,
    normalize_numbers,
    read_number,
    strip_thinking,
)

__all__ = ["GSM8K", "gold_answer", "answers_match"]

_TAIL = 4000  # characters of the answer that math-verify looks at


@functools.lru_cache(maxsize=2)
def _load(split: str = "test") -> tuple[dict[str, Any], ...]:
    path = resources.files("testtime") / "data" / "gsm8k" / f"{split}.jsonl.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        return tuple(json.loads(line) for line in lines if line.strip())


def gold_answer(solution: str) -> str:
    """The number after ``####`` in a GSM8K solution, commas removed."""
    return solution.rsplit("####", 1)[-1].strip().replace(",", "")


def _exact(found: str | None, gold: str) -> bool:
    value = None if found is None else read_number(found)
    return value is not None and value == read_number(gold)


def answers_match(answer: str, gold: str) -> tuple[bool, str | None]:
    """Whether a model's answer text ends in the gold number; also the extracted answer (for feedback).

    Returns:
        ``(match, extracted)``.
    """
    # minus-sign variants as "-", "1\u00a0234" as "1,234" (math-verify read it as 234)
    text = normalize_numbers(strip_thinking(answer if isinstance(answer, str) else "")[-_TAIL:])
    fallback = last_number(text)
    try:
        from math_verify import parse, verify
    except ImportError:  # optional dependency (testtime[tasks])
        return _exact(fallback, gold), fallback
    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None
    try:
        predicted = parse(text, parsing_timeout=timeout)
        if not predicted:
            return _exact(fallback, gold), fallback
        ok = verify(parse(gold, parsing_timeout=timeout), predicted, timeout_seconds=timeout)
        shown = str(predicted[-1]) if predicted else fallback
        return bool(ok), shown
    except Exception:  # math-verify raises on pathological input despite raise_on_error=False; fall back
        return _exact(fallback, gold), fallback


class GSM8K(Task):
    """GSM8K: the test split (1,319 problems, the default) and the train split (7,473) for RL; the answer is
    the final number."""

    name = "gsm8k"
    description = "GSM8K grade-school math (1,319 test / 7,473 train problems), checked with math-verify"
    splits = ("test", "train")

    def _instances(
        self, *, split: str, seed: int, n: int | None, difficulty: Mapping[str, int]
    ) -> list[Instance]:
        rows = _load(split)
        out = []
        for i in seeded_subset(len(rows), seed, n):
            gold = gold_answer(rows[i]["answer"])
            data = {"question": rows[i]["question"], "answer": gold, "solution": rows[i]["answer"]}
            out.append(
                Instance(
                    task=self.name,
                    id=f"{split}-{i}",
                    data=data,
                    reference=f"The answer is \\boxed{{{gold}}}.",
                )
            )
        return out

    def prompt(self, instance: Instance) -> str:
        return (
            f"{instance.data['question']}\n"
            "Solve the problem step by step, then give the final number as \\boxed{N}."
        )

    def verify(self, instance: Instance, answer: str) -> Verdict:
        several = hedged(answer)
        if several is not None:  # "16 or 15", \\boxed{15 \\lor 16}: math-verify accepts any one of them
            first, last = (excerpt(x, 30) for x in several)
            return Verdict(
                score=0.0,
                solved=False,
                feedback=f"The final answer states several results ({first} ... {last}); give one number.",
            )
        final = last_number(after_answer_marker(answer))
        if final is not None and "," in final and read_number(final) is None:
            # "4,37", "1,2345": a decimal comma or a broken thousands group; math-verify reads them as 4.37
            # and 1234, a different number
            return Verdict(
                score=0.0,
                solved=False,
                feedback=f"Could not read {excerpt(final, 30)!r} as one number; write it like 1234 or 1,234.",
            )
        ok, found = answers_match(answer, instance.data["answer"])
        if ok:
            return Verdict(score=1.0, solved=True, feedback="Correct.", details={"answer": found})
        if found is None:
            return Verdict(score=0.0, solved=False, feedback="No final answer found; end with \\boxed{N}.")
        return Verdict(
            score=0.0,
            solved=False,
            feedback=f"The final answer {found[:40]} is wrong.",
            details={"answer": found[:40]},
        )
