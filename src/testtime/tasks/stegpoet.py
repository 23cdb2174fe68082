"""StegPoet (Mind Evolution, Appendix F): hide a number sequence in a poem through a word cipher.

An instance gives a hidden message (a sequence of numbers) and a cipher mapping each number to a code word.
The poem is decoded by reading its words in order and replacing every code word by its number (all other
words are ignored); it solves the instance when the decoded sequence equals the message and consecutive
code words are separated by at least ``min_gap`` other words (so the code words cannot simply be listed).

Score (Appendix F's shape): ``k + (1 - d / max(n, m))`` where ``k`` is the position of the first mismatch
(the length of the common prefix of decoded and target), ``d`` the Levenshtein distance between the decoded
sequence (length ``m``) and the target (length ``n``); divided by ``n + 1`` so a solution scores exactly
1.0. A decoded message that matches but breaks the gap rule is capped below 1.

Choices the paper leaves open (docs/fidelity/tasks.md): the code-word list (concrete nouns that rarely
occur by chance), the gap rule's default (``min_gap = 1``: no two code words adjacent), case-insensitive
whole-word matching with simple plural/possessive forms not counted, and the normalisation by ``n + 1``.
The instance's ``reference`` is a mechanical text (code words separated by filler), not a poem: it exists
so tests can check that a correct encoding verifies.
"""

from __future__ import annotations

import random
import re
from typing import Any

from testtime.errors import UserError
from testtime.tasks.base import Instance, Task, Verdict
from testtime.tasks.parsing import strip_thinking

__all__ = ["StegPoet", "decode", "levenshtein"]

CODE_WORDS = [
    "lantern", "harbor", "violin", "meadow", "falcon", "pebble", "compass", "orchard", "anchor", "thimble",
    "glacier", "saddle", "velvet", "cactus", "beacon", "walnut", "ember", "quarry", "trumpet", "juniper",
    "kettle", "marble", "otter", "parsnip", "ribbon", "sparrow", "tundra", "willow", "zephyr", "acorn",
]  # fmt: skip
_FILLER = ["and the night was still", "beneath a quiet sky", "we wandered on", "as morning came"]
# A word is a run of letters of any script, so a code word glued to other letters ("üharbor", "lanternß") is
# not that code word: the decoder reads what a reader sees.
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def levenshtein(a: list[Any], b: list[Any]) -> int:
    """Edit distance between two sequences (insertions, deletions, substitutions each cost 1)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def decode(text: str, cipher: dict[str, str]) -> tuple[list[int], list[int]]:
    """Decode a text with a cipher ``{number (as str): word}``.

    Returns:
        ``(numbers, word positions)``: the decoded numbers and the index (in words) of each code word.
    """
    reverse = {word.lower(): int(number) for number, word in cipher.items()}
    numbers, positions = [], []
    for index, match in enumerate(_WORD.finditer(strip_thinking(text))):
        word = match.group(0).lower()
        if word in reverse:
            numbers.append(reverse[word])
            positions.append(index)
    return numbers, positions


class StegPoet(Task):
    """StegPoet: write a poem whose code words, read in order, spell a hidden number sequence."""

    name = "stegpoet"
    description = "hide a number sequence in a poem through a word cipher (Mind Evolution App. F)"
    splits = ("test", "train")
    difficulty = {"length": 10, "vocab": 10, "min_gap": 1}
    difficulty_min = {"min_gap": 0}

    def generate(self, rng: random.Random, *, index: int, seed: int, **difficulty: int) -> Instance:
        length, vocab, gap = difficulty["length"], difficulty["vocab"], difficulty["min_gap"]
        if vocab > len(CODE_WORDS) or length > 200:
            raise UserError(f"stegpoet: vocab is at most {len(CODE_WORDS)} and length at most 200")
        words = rng.sample(CODE_WORDS, k=vocab)
        cipher = {str(i): word for i, word in enumerate(words)}
        message = [rng.randrange(vocab) for _ in range(length)]
        parts = []
        for number in message:
            parts.append(cipher[str(number)])
            parts.append(rng.choice(_FILLER) + ",")
        reference = " ".join(parts).rstrip(",") + "."
        data = {"message": message, "cipher": cipher, "min_gap": gap}
        return Instance(task=self.name, id=f"seed{seed}-{index}", data=data, reference=reference)

    def prompt(self, instance: Instance) -> str:
        data = instance.data
        cipher = ", ".join(f"{n} -> '{w}'" for n, w in data["cipher"].items())
        gap = data["min_gap"]
        return (
            "Write a poem that hides a secret number sequence. The cipher maps numbers to code words: "
            f"{cipher}.\nHidden message: {data['message']}.\n"
            "Reading the poem's words in order and keeping only the code words must give exactly the hidden "
            "message: use each code word exactly where its number occurs, and never use a code word anywhere "
            f"else. Separate consecutive code words by at least {gap} other word(s). Write only the poem."
        )

    def verify(self, instance: Instance, answer: str) -> Verdict:
        data = instance.data
        target: list[int] = list(data["message"])
        cipher: dict[str, str] = data["cipher"]
        decoded, positions = decode(answer if isinstance(answer, str) else "", cipher)
        n, m = len(target), len(decoded)
        prefix = 0
        while prefix < min(n, m) and decoded[prefix] == target[prefix]:
            prefix += 1
        distance = levenshtein(decoded[: 4 * n + 8], target)  # beyond 4n extra words nothing changes much
        raw = prefix + (1.0 - distance / max(n, m, 1))
        gap = data["min_gap"]
        close = [
            (i, positions[i + 1] - positions[i] - 1)
            for i in range(len(positions) - 1)
            if positions[i + 1] - positions[i] - 1 < gap
        ]
        lines = [f"Decoded message: {decoded[:60]}{' ...' if m > 60 else ''} (target has {n} numbers)."]
        if decoded != target:
            if prefix < min(n, m):
                want = cipher[str(target[prefix])]
                got = cipher[str(decoded[prefix])]
                lines.append(
                    f"The first mismatch is at position {prefix + 1}: expected '{want}' ({target[prefix]}) but "
                    f"found '{got}' ({decoded[prefix]})."
                )
            elif m < n:
                missing = ", ".join(f"'{cipher[str(x)]}'" for x in target[m : m + 5])
                lines.append(
                    f"The poem stops after {m} code words; next it needs {missing}{' ...' if n - m > 5 else ''}."
                )
            else:
                lines.append(
                    f"The poem has {m - n} code word(s) too many after position {n}; code words may appear only "
                    "where the message needs them."
                )
            lines.append(f"Edit distance to the message: {distance}.")
        for i, words_between in close[:5]:
            lines.append(
                f"Code words {i + 1} ('{cipher[str(decoded[i])]}') and {i + 2} ('{cipher[str(decoded[i + 1])]}') "
                f"are separated by {words_between} word(s); at least {gap} required."
            )
        solved = decoded == target and not close
        score = 1.0 if solved else min(0.999, raw / (n + 1) * (0.9 if close else 1.0))
        if solved:
            lines.append("The hidden message is encoded correctly.")
        return Verdict(
            score=max(score, 0.0),
            solved=solved,
            feedback="\n".join(lines),
            details={"prefix": prefix, "distance": distance, "gap_violations": len(close)},
        )
