"""Reading: answer one question about a short generated text (a fact looked up among distractors).

Each instance is a few sentences about invented people ("Nadia lives in Oslo and works as a pilot."), one
sentence per person, and a question about one fact: either a person's attribute ("Where does Nadia
live?") or who has a given attribute ("Who works as a pilot?"). Every person in a text has a different
value of each attribute, so the answer is unique. The facts are invented, so only the text can answer.

Checking: the answer's final part (after "the answer is" / "Answer:", else its last line; see
:func:`testtime.tasks.parsing.after_answer_marker`) must name the gold value and no other value of the same
kind (the whole vocabulary of the asked attribute, or every name for "who" questions, not only the ones in
the text), and must not negate ("not", "never", "n't"). So an answer listing several candidates, a hedge
("Oslo or Lima"), an echoed question (no value) or an echoed text (every value) scores 0.

Score: 1.0 solved, else 0.0. With ``Reading(graded=True)`` an answer that names exactly one value of the
asked kind, but the wrong one, gets 0.25 when that value is in the text (the right kind of fact, the wrong
person) and 0.1 otherwise; hedges, negations and answers naming nothing still get 0.

The names, places and attributes are this module's own word lists.
"""

from __future__ import annotations

import random
import re
from typing import Any

from testtime.errors import UserError
from testtime.tasks.base import Instance, Task, Verdict
from testtime.tasks.parsing import after_answer_marker, excerpt, strip_thinking

__all__ = ["ATTRIBUTES", "NAMES", "Reading", "named_values"]

# first names that are not ordinary English words (so that "who" answers are read unambiguously)
NAMES: tuple[str, ...] = (
    "Anna", "Boris", "Carla", "Daniel", "Elena", "Felix", "Greta", "Hugo", "Irene", "Jonas", "Kofi",
    "Leila", "Marco", "Nadia", "Oscar", "Priya", "Rafael", "Sofia", "Tariq", "Ursula", "Victor", "Wanda",
    "Yusuf", "Zara", "Ines", "Omar", "Lucia", "Pavel", "Mei", "Tomas",
)  # fmt: skip

# attribute -> (clause about a person, question about a person, question about a value, values);
# the vocabularies are disjoint from each other and from NAMES
ATTRIBUTES: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "city": (
        "lives in {value}",
        "Where does {name} live?",
        "Who lives in {value}?",
        ("Oslo", "Lima", "Cairo", "Dublin", "Madrid", "Vienna", "Prague", "Nairobi", "Seoul", "Toronto",
         "Manila", "Athens", "Berlin", "Warsaw", "Havana", "Quito", "Hanoi", "Sydney", "Denver", "Lisbon"),
    ),
    "job": (
        "works as a {value}",
        "What is {name}'s job?",
        "Who works as a {value}?",
        ("baker", "nurse", "pilot", "teacher", "farmer", "plumber", "dentist", "painter", "chef", "lawyer",
         "tailor", "librarian"),
    ),
    "pet": (
        "has a pet {value}",
        "What pet does {name} have?",
        "Who has a pet {value}?",
        ("cat", "dog", "rabbit", "parrot", "hamster", "turtle", "goldfish", "lizard", "ferret", "canary"),
    ),
    "instrument": (
        "plays the {value}",
        "Which instrument does {name} play?",
        "Who plays the {value}?",
        ("piano", "violin", "guitar", "drums", "flute", "cello", "trumpet", "harp"),
    ),
    "colour": (
        "likes the colour {value}",
        "Which colour does {name} like?",
        "Who likes the colour {value}?",
        ("red", "blue", "green", "yellow", "purple", "black", "white", "pink", "brown", "orange"),
    ),
}  # fmt: skip

_NEGATION = re.compile(r"\b(?:not|never|neither|nor|none|no)\b|n't\b|n’t\b", re.IGNORECASE)
_PATTERNS: dict[tuple[str, ...], re.Pattern[str]] = {}
MAX_SEGMENT = 2_000  # characters of the final answer that are read (an answer is one short sentence)


def _pattern(values: tuple[str, ...]) -> re.Pattern[str]:
    """One alternation of the values as whole words (a plural "s"/"es" allowed), case-insensitive."""
    if values not in _PATTERNS:
        words = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
        _PATTERNS[values] = re.compile(rf"(?<![\w'’-])({words})(?:e?s)?(?![\w-])", re.IGNORECASE)
    return _PATTERNS[values]


def named_values(text: str, values: tuple[str, ...]) -> list[str]:
    """The distinct ``values`` that ``text`` names, in the order of first mention (canonical spelling)."""
    canonical = {v.lower(): v for v in values}
    found: dict[str, None] = {}
    for match in _pattern(values).finditer(text):
        found[canonical[match.group(1).lower()]] = None
    return list(found)


class Reading(Task):
    """Answer one question about a short generated text; the answer must name one value, the right one."""

    name = "reading"
    description = "answer a question about a short generated text (one fact among distractors)"
    numeric = False
    splits = ("test", "train")
    difficulty = {"people": 4, "facts": 2}

    def __init__(self, *, graded: bool = False) -> None:
        self.graded = graded

    def generate(self, rng: random.Random, *, index: int, seed: int, **difficulty: int) -> Instance:
        people, facts = difficulty["people"], difficulty["facts"]
        smallest = min(len(spec[3]) for spec in ATTRIBUTES.values())
        if people > smallest:
            raise UserError(f"reading: people is at most {smallest} (each person needs a different value)")
        if facts > len(ATTRIBUTES):
            raise UserError(
                f"reading: facts is at most {len(ATTRIBUTES)} (the attributes: {', '.join(ATTRIBUTES)})"
            )
        names = rng.sample(NAMES, people)
        attributes = rng.sample(sorted(ATTRIBUTES), facts)
        values = {a: rng.sample(ATTRIBUTES[a][3], people) for a in attributes}
        sentences = []
        for i, person in enumerate(names):
            clauses = [ATTRIBUTES[a][0].format(value=values[a][i]) for a in attributes]
            joined = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
            sentences.append(f"{person} {joined}.")
        asked, who = rng.choice(attributes), rng.randrange(people)
        if rng.random() < 0.5:
            kind, question, answer = (
                "attribute",
                ATTRIBUTES[asked][1].format(name=names[who]),
                values[asked][who],
            )
        else:
            kind, question, answer = (
                "person",
                ATTRIBUTES[asked][2].format(value=values[asked][who]),
                names[who],
            )
        return Instance(
            task=self.name,
            id=f"seed{seed}-{index}",
            data={"text": " ".join(sentences), "question": question, "kind": kind, "attribute": asked,
                  "answer": answer},
            reference=f"The answer is {answer}.",
        )  # fmt: skip

    def prompt(self, instance: Instance) -> str:
        data = instance.data
        return (
            f"Read the text and answer the question.\n\nText: {data['text']}\n\nQuestion: {data['question']}\n"
            "Answer with one short sentence."
        )

    def verify(self, instance: Instance, answer: str) -> Verdict:
        data = instance.data
        gold = str(data["answer"])
        kinds = NAMES if data["kind"] == "person" else ATTRIBUTES[data["attribute"]][3]
        segment = after_answer_marker(strip_thinking(answer))[-MAX_SEGMENT:]
        named = named_values(segment, kinds)
        details: dict[str, Any] = {"answer": excerpt(segment, 200), "named": named[:10]}
        kind = "person" if data["kind"] == "person" else str(data["attribute"])
        if not named:
            return Verdict(
                score=0.0, solved=False, feedback=f"The answer names no {kind}; give one.", details=details
            )
        if len(named) > 1:
            shown = ", ".join(named[:5]) + (" ..." if len(named) > 5 else "")
            return Verdict(
                score=0.0,
                solved=False,
                feedback=f"The answer names several ({shown}); give exactly one {kind}.",
                details=details,
            )
        if _NEGATION.search(segment):
            return Verdict(
                score=0.0,
                solved=False,
                feedback="The answer is negated; state the answer, not what it is not.",
                details=details,
            )
        if named[0] == gold:
            return Verdict(score=1.0, solved=True, feedback=f"Correct: {gold}.", details=details)
        in_text = re.search(rf"\b{re.escape(named[0])}\b", str(data["text"])) is not None
        score = (0.25 if in_text else 0.1) if self.graded else 0.0
        where = "is in the text but does not answer the question" if in_text else "is not in the text"
        return Verdict(score=score, solved=False, feedback=f"{named[0]} {where}.", details=details)
