"""Long-context retrieval tasks generated offline, and their evaluation on a trained language model.

- S-NIAH (RULER-style single needle, Titans Table 2): ``passkey`` (a 5-digit pass key in repeated filler
  text), ``number`` (a 7-digit "special magic number" for a key word, in natural text) and ``word`` (a
  "special magic word" for a key word, in natural text).
- ``babilong`` (BABILong qa1-style): "<person> went to the <place>." facts scattered through natural
  text; the question asks where one person is, the answer is that person's last place.

The natural-text haystack is the trainer's bundled tinyshakespeare (no download); lengths are measured in
tokens of the model's tokenizer. A sample is correct when greedy decoding after the prompt starts with the
answer.

Shapes: b batch, n tokens.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = ["TASKS", "NiahSample", "evaluate_niah", "make_sample"]

Task = Literal["passkey", "number", "word", "babilong"]
TASKS: tuple[str, ...] = ("passkey", "number", "word", "babilong")

_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
_KEYS = ["apple", "river", "candle", "violet", "harbor", "silver", "meadow", "falcon", "ember", "quartz"]
_WORDS = [
    "lantern",
    "marble",
    "thistle",
    "cobalt",
    "saffron",
    "juniper",
    "pepper",
    "walnut",
    "orchid",
    "garnet",
]
_PEOPLE = ["Mary", "John", "Sandra", "Daniel"]
_PLACES = ["kitchen", "garden", "office", "hallway", "bedroom", "bathroom"]


@dataclass(kw_only=True)
class NiahSample:
    """One retrieval question.

    Attributes:
        prompt: haystack with the needle(s), then the question (the answer follows directly).
        answer: the expected continuation.
        depth: where the (last) needle sits, as a fraction of the haystack.
    """

    prompt: str
    answer: str
    depth: float


def _natural_sentences() -> list[str]:
    try:
        from testtime.train.data import shakespeare_documents

        text = " ".join(d.text for d in shakespeare_documents())
    except (ModuleNotFoundError, OSError):  # the trainer's corpus is absent: fall back to the filler
        text = _FILLER * 50
    words = text.split()
    return [" ".join(words[i : i + 12]) + " " for i in range(0, len(words) - 12, 12)]


_SENTENCES: list[str] | None = None


def _haystack(
    num_tokens: int, count: Callable[[str], int], rng: random.Random, *, natural: bool
) -> list[str]:
    """Sentences whose concatenation has about ``num_tokens`` tokens."""
    global _SENTENCES
    if natural and _SENTENCES is None:
        _SENTENCES = _natural_sentences()
    pool = _SENTENCES if natural else [_FILLER]
    assert pool is not None
    start = rng.randrange(len(pool))
    out, total = [], 0
    while total < num_tokens:
        sentence = pool[(start + len(out)) % len(pool)]
        out.append(sentence)
        total += count(sentence)
    return out


def make_sample(
    task: Task, num_tokens: int, *, count: Callable[[str], int], rng: random.Random
) -> NiahSample:
    """Generate one sample of about ``num_tokens`` haystack tokens.

    Args:
        task: "passkey", "number", "word" or "babilong".
        num_tokens: haystack length in tokens (as counted by ``count``).
        count: tokens of a string under the model's tokenizer.
        rng: the random source (seeded by the caller).

    Returns:
        The :class:`NiahSample`.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    hay = _haystack(num_tokens, count, rng, natural=task != "passkey")
    depth_index = rng.randrange(len(hay) + 1)
    if task == "passkey":
        key = str(rng.randrange(10_000, 100_000))
        needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
        question = "What is the pass key? The pass key is "
        answer = key
    elif task in ("number", "word"):
        name = rng.choice(_KEYS)
        value = str(rng.randrange(1_000_000, 10_000_000)) if task == "number" else rng.choice(_WORDS)
        kind = "number" if task == "number" else "word"
        needle = f"One of the special magic {kind}s for {name} is: {value}. "
        question = f"What is the special magic {kind} for {name}? The special magic {kind} for {name} is "
        answer = value
    else:  # babilong qa1: several moves, the last one of the asked person counts
        facts = [f"{rng.choice(_PEOPLE)} went to the {rng.choice(_PLACES)}. " for _ in range(4)]
        person = rng.choice(_PEOPLE)
        place = rng.choice(_PLACES)
        facts.append(f"{person} went to the {place}. ")
        positions = sorted(rng.randrange(len(hay) + 1) for _ in facts)
        for offset, (pos, fact) in enumerate(zip(positions, facts, strict=True)):
            hay.insert(pos + offset, fact)
        # the asked person's last move is the answer, wherever the random facts put them
        answer = next(f.split(" to the ")[1][:-2] for f in reversed(facts) if f.startswith(person + " "))
        prompt = "".join(hay) + f"Where is {person}? {person} is in the "
        return NiahSample(prompt=prompt, answer=answer, depth=positions[-1] / max(1, len(hay)))
    hay.insert(depth_index, needle)
    return NiahSample(prompt="".join(hay) + question, answer=answer, depth=depth_index / max(1, len(hay) - 1))


@torch.no_grad()
def greedy_continue(model: Any, ids: list[int], num_tokens: int) -> list[int]:
    """Greedy tokens after ``ids``; uses the model's streaming ``step`` when it has one (Titans)."""
    x = torch.tensor([ids])
    if hasattr(model, "step"):
        out, _ = model.generate(x, max_new_tokens=num_tokens)
        return out[0].tolist()
    seq = ids[:]
    for _ in range(num_tokens):
        logits = model(torch.tensor([seq]))
        logits = logits.logits if hasattr(logits, "logits") else logits["logits"]
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(ids) :]


def evaluate_niah(
    model: Any,
    tokenizer: Any,
    *,
    task: Task,
    lengths: Sequence[int],
    num_samples: int,
    seed: int = 0,
) -> dict[int, float]:
    """Accuracy of greedy decoding on ``num_samples`` generated samples at each haystack length.

    Args:
        model: a language model (``forward(ids)`` returning logits, or a Titans model with ``generate``).
        tokenizer: with ``encode`` and ``decode``.
        task: which task.
        lengths: haystack lengths in tokens.
        num_samples: samples per length.
        seed: the generator's seed (the same samples for every model).

    Returns:
        {length: accuracy in [0, 1]}.
    """
    results = {}
    for length in lengths:
        rng = random.Random(f"{seed}-{task}-{length}")
        correct = 0
        for _ in range(num_samples):
            sample = make_sample(task, length, count=lambda s: len(tokenizer.encode(s)), rng=rng)
            ids = tokenizer.encode(sample.prompt)
            answer_len = len(tokenizer.encode(sample.answer)) + 1
            text = tokenizer.decode(greedy_continue(model, ids, answer_len))
            correct += text.strip().startswith(sample.answer)
        results[length] = correct / num_samples
    return results
