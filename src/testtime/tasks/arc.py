"""ARC-Easy and ARC-Challenge (Clark et al. 2018): multiple-choice science questions.

Two ways to answer:

- generation: the model writes text ending in "The answer is (B)"; :meth:`ArcTask.verify` reads the letter
  (also "Answer: B", a lone "(B)" or "B", or the exact text of one option);
- cloze: :func:`cloze_predict` scores each option's text as a continuation of "Question: ...\\nAnswer:"
  through a :class:`~testtime.tasks.scoring.ContinuationScorer` and picks the best by mean log-probability
  per token (``normalize="mean"``; also ``"sum"`` and ``"chars"``, per character, as lm-eval's
  ``acc_norm`` does with bytes). Small models are near chance with letters but well above it by cloze.

Data: the bundled train and test splits (CC BY-SA 4.0, see src/testtime/data/arc/).
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from testtime.tasks.base import Instance, Task, Verdict, seeded_subset
from testtime.tasks.parsing import strip_thinking
from testtime.tasks.scoring import ContinuationScorer, as_score

__all__ = ["ArcChallenge", "ArcEasy", "ArcTask", "cloze_accuracy", "cloze_predict", "extract_choice"]


@functools.lru_cache(maxsize=8)
def _load(subset: str, split: str) -> tuple[dict[str, Any], ...]:
    path = resources.files("testtime") / "data" / "arc" / f"arc_{subset}_{split}.jsonl.gz"
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        return tuple(json.loads(line) for line in lines if line.strip())


def extract_choice(text: str, labels: Sequence[str], texts: Sequence[str] = ()) -> str | None:
    """The option label a model's answer names, or None.

    Tries, in order: "answer is (B)" / "answer: B" (the last such phrase), a lone "(B)", a text that is just
    the label, and the exact text of one option. Naming several options ("(A) (B)", "A or B", "A & B",
    "A and/or B", "A|B" after the marker, or different parenthesised labels without one) is no answer.
    """
    text = strip_thinking(text if isinstance(text, str) else "").strip()
    group = "|".join(re.escape(label) for label in labels)
    marked = list(re.finditer(rf"(?i:answer\s*(?:is|:)?)\s*:?\s*\(?\**({group})\b\)?", text))
    if marked:
        line = text[marked[-1].start() :].split("\n", 1)[0]
        joined = rf"(?<![\w'])\(?({group})\)?(?:\s*(?:,|/|&|\||\+|\bor\b|\band\b)\s*)+\(?({group})\b"
        named = {marked[-1].group(1), *re.findall(rf"\(({group})\)", line)}
        named |= {label for pair in re.findall(joined, line) for label in pair}
        if len(named) > 1:  # "(A) (B)", "A or B": naming several options is no answer
            return None
        return marked[-1].group(1)
    parenthesised = re.findall(rf"\(({group})\)", text)
    if parenthesised:
        return parenthesised[-1] if len(set(parenthesised)) == 1 else None
    bare = re.fullmatch(rf"\W*({group})\W*", text)
    if bare:
        return bare.group(1)
    lowered = text.lower().rstrip(".")
    matches = [
        label
        for label, option in zip(labels, texts, strict=False)
        if option.lower().strip().rstrip(".") == lowered
    ]
    return matches[0] if len(matches) == 1 else None


class ArcTask(Task):
    """ARC multiple choice; subclasses pick the subset."""

    subset = "easy"
    splits = ("test", "train")

    def _instances(
        self, *, split: str, seed: int, n: int | None, difficulty: Mapping[str, int]
    ) -> list[Instance]:
        rows = _load(self.subset, split)
        out = []
        for i in seeded_subset(len(rows), seed, n):
            row = rows[i]
            data = {
                "question": row["question"],
                "labels": [c["label"] for c in row["choices"]],
                "choices": [c["text"] for c in row["choices"]],
                "answer": row["answerKey"],
            }
            out.append(
                Instance(
                    task=self.name, id=row["id"], data=data, reference=f"The answer is ({row['answerKey']})."
                )
            )
        return out

    def prompt(self, instance: Instance) -> str:
        data = instance.data
        options = "\n".join(
            f"({label}) {text}" for label, text in zip(data["labels"], data["choices"], strict=True)
        )
        return (
            f"Question: {data['question']}\n{options}\n"
            "Think briefly, then end with 'The answer is (X)' where X is the letter of the correct option."
        )

    def cloze_prompt(self, instance: Instance) -> str:
        """The context whose continuations are the options' texts (cloze scoring)."""
        return f"Question: {instance.data['question']}\nAnswer:"

    def verify(self, instance: Instance, answer: str) -> Verdict:
        data = instance.data
        choice = extract_choice(answer, data["labels"], data["choices"])
        if choice is None:
            return Verdict(
                score=0.0,
                solved=False,
                feedback=f"No option letter found; end with 'The answer is (X)', X one of {', '.join(data['labels'])}.",
            )
        if choice == data["answer"]:
            return Verdict(
                score=1.0, solved=True, feedback=f"({choice}) is correct.", details={"choice": choice}
            )
        return Verdict(
            score=0.0, solved=False, feedback=f"({choice}) is not correct.", details={"choice": choice}
        )


class ArcEasy(ArcTask):
    name = "arc-easy"
    description = "ARC-Easy science multiple choice (generation or cloze scoring)"
    subset = "easy"


class ArcChallenge(ArcTask):
    name = "arc-challenge"
    description = "ARC-Challenge science multiple choice (generation or cloze scoring)"
    subset = "challenge"


def cloze_predict(
    task: ArcTask, instance: Instance, scorer: ContinuationScorer, *, normalize: str = "mean"
) -> str:
    """The option label with the best normalised log-probability as a continuation.

    Args:
        task: an ARC task.
        instance: the question.
        scorer: the log-probability source.
        normalize: ``"mean"`` (per token), ``"sum"`` or ``"chars"`` (per character of the option).

    Returns:
        The chosen label (turn it into an answer text with ``f"The answer is ({label})."``).
    """
    options = [" " + text for text in instance.data["choices"]]
    scores = [as_score(s) for s in scorer.score_continuations(task.cloze_prompt(instance), options)]
    values = []
    for (logprob, tokens), option in zip(scores, options, strict=True):
        if normalize == "sum":
            values.append(logprob)
        elif normalize == "chars":
            values.append(logprob / max(len(option), 1))
        elif normalize == "mean":
            if tokens is None:
                raise ValueError("normalize='mean' needs token counts; this scorer returns plain floats")
            values.append(logprob / max(tokens, 1))
        else:
            raise ValueError(f"normalize must be 'mean', 'sum' or 'chars', not {normalize!r}")
    best = max(range(len(values)), key=values.__getitem__)
    return instance.data["labels"][best]


def cloze_accuracy(
    task: ArcTask, instances: Sequence[Instance], scorer: ContinuationScorer, *, normalize: str = "mean"
) -> float:
    """The fraction of instances whose cloze prediction verifies as solved."""
    if not instances:
        return 0.0
    solved = 0
    for instance in instances:
        label = cloze_predict(task, instance, scorer, normalize=normalize)
        solved += task.verify(instance, f"The answer is ({label}).").solved
    return solved / len(instances)
