"""Rule-based rewards of the R1 recipe as plain callables ``(prompts, completions, **columns) -> list[float]``.

The signature is TRL's: ``completions`` are strings or chat completions (lists of messages), ``columns`` are
the data set's other columns (``instance`` for :mod:`testtime.tasks`, ``answer`` for a gold answer) plus
``completion_ids`` (token ids) where the trainer has them.

- :func:`accuracy_reward`: R1's accuracy reward (arXiv 2501.12948, sec. 2.2.2): 1 when the task's verifier
  says solved, else 0. A task's *graded* score is an explicit option (``graded=True``): graded partial
  credit invites farming (a countdown answer that names a given number near the target scores 0.34).
  The answer is the content of the last ``<answer>`` block when there is one, else the text after the
  last ``</think>``.
- :func:`math_reward`: a gold-answer column checked with math-verify (the GSM8K checker of
  :func:`testtime.tasks.gsm8k.answers_match`).
- :func:`format_reward`: R1's format reward (sec. 2.2.2; template of Table 1): the completion is exactly
  ``<think> ... </think> <answer> ... </answer>`` with each tag once, in order, nothing but whitespace
  outside and between the blocks. A prompt ending in ``<think>`` (the R1-Zero template prefills it) counts
  as the completion's opening tag. Repeated blocks, nested or stray tags score 0 (the common regex
  ``^<think>.*?</think>\\s*<answer>.*?</answer>$`` with DOTALL accepts two concatenated think/answer pairs;
  this one does not).
- :func:`language_consistency_reward`: R1's language consistency reward (sec. 2.3.2): the share of words
  of the chain of thought written in the target language's script.
- :func:`overlong_reward`: DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13) on token lengths.
- :func:`length_penalty`: a linear penalty beyond a target length (a choice of this package; the R1 paper
  has none).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from testtime.rl.grpo import overlong_penalty
from testtime.tasks.base import Instance, Task, completion_text, get_task

__all__ = [
    "RewardFn",
    "accuracy_reward",
    "answer_text",
    "format_ok",
    "format_reward",
    "language_consistency_reward",
    "length_penalty",
    "math_reward",
    "overlong_reward",
    "resolve_rewards",
    "tag_count_reward",
]

RewardFn = Callable[..., list[float]]

_TAG = re.compile(r"</?(?:think|answer)>")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _as_instance(value: Any) -> Instance:
    """An instance column value: an Instance, its ``to_dict()``, or that dict as JSON."""
    if isinstance(value, Instance):
        return value
    if isinstance(value, str):
        value = json.loads(value)
    return Instance.from_dict(value)


def _text(prompt: Any) -> str:
    """A prompt's text: a string, or the last message's content of a conversation."""
    return completion_text(prompt) if prompt is not None else ""


def answer_text(completion: str) -> str:
    """The content of the last ``<answer>...</answer>`` block, else the text after the last ``</think>``."""
    blocks = _ANSWER.findall(completion)
    if blocks:
        return blocks[-1].strip()
    end = completion.rfind("</think>")
    return completion[end + len("</think>") :] if end >= 0 else completion


def format_ok(completion: str, *, prefilled_think: bool = False) -> bool:
    """Whether ``completion`` is exactly ``<think>..</think> <answer>..</answer>`` (see the module docstring).

    Args:
        completion: the generated text.
        prefilled_think: the prompt already ended in ``<think>``; a completion that starts with its own
            ``<think>`` then still counts once (models often repeat it).
    """
    text = completion
    if prefilled_think and not text.lstrip().startswith("<think>"):
        text = "<think>" + text
    tags = [(m.group(0), m.start(), m.end()) for m in _TAG.finditer(text)]
    if [t[0] for t in tags] != ["<think>", "</think>", "<answer>", "</answer>"]:
        return False
    (_, s0, _), (_, s1, e1), (_, s2, e2), (_, _, e3) = tags
    return not text[:s0].strip() and not text[e1:s2].strip() and not text[e3:].strip()


def format_reward(*, prefilled_think: bool | None = None) -> RewardFn:
    """R1's format reward: 1.0 for a well-formed completion, else 0.0.

    Args:
        prefilled_think: None (default) decides per row from the prompt (ending in ``<think>``, spaces
            ignored); True/False forces it.
    """

    def format_reward(prompts: Sequence[Any] | None, completions: Sequence[Any], **_: Any) -> list[float]:
        out = []
        for index, completion in enumerate(completions):
            prefilled = prefilled_think
            if prefilled is None:
                prompt = _text(prompts[index]) if prompts is not None else ""
                prefilled = prompt.rstrip().endswith("<think>")
            out.append(1.0 if format_ok(completion_text(completion), prefilled_think=prefilled) else 0.0)
        return out

    return format_reward


def tag_count_reward(*, prefilled_think: bool | None = None) -> RewardFn:
    """Partial format credit: 0.25 for each of the four tags that appears exactly once (a shaping reward
    for small models that rarely hit the strict format; not in the R1 paper)."""

    def tag_count(prompts: Sequence[Any] | None, completions: Sequence[Any], **_: Any) -> list[float]:
        out = []
        for index, completion in enumerate(completions):
            text = completion_text(completion)
            prefilled = prefilled_think
            if prefilled is None:
                prefilled = prompts is not None and _text(prompts[index]).rstrip().endswith("<think>")
            if prefilled and "<think>" not in text:
                text = "<think>" + text
            out.append(
                sum(0.25 for tag in ("<think>", "</think>", "<answer>", "</answer>") if text.count(tag) == 1)
            )
        return out

    return tag_count


def accuracy_reward(
    task: Task | str,
    *,
    graded: bool = False,
    instance_column: str = "instance",
    use_answer_block: bool = True,
) -> RewardFn:
    """R1's accuracy reward through a :mod:`testtime.tasks` verifier.

    Args:
        task: the task or its registered name.
        graded: reward the verifier's graded score in [0, 1] instead of solved (1) / not (0).
        instance_column: the column holding each row's instance.
        use_answer_block: verify the last ``<answer>`` block's content when there is one.
    """
    task = get_task(task) if isinstance(task, str) else task

    def accuracy_reward(
        prompts: Sequence[Any] | None, completions: Sequence[Any], **columns: Any
    ) -> list[float]:
        if instance_column not in columns:
            raise ValueError(f"accuracy reward for {task.name!r} needs the column {instance_column!r}")
        instances = columns[instance_column]
        if len(instances) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(instances)} instances")
        out = []
        for instance, completion in zip(instances, completions, strict=True):
            text = completion_text(completion)
            if use_answer_block:
                text = answer_text(text)
            verdict = task.verify(_as_instance(instance), text)
            out.append(float(verdict.score) if graded else (1.0 if verdict.solved else 0.0))
        return out

    accuracy_reward.__name__ = f"{task.name.replace('-', '_')}_accuracy"
    return accuracy_reward


def math_reward(*, answer_column: str = "answer") -> RewardFn:
    """1.0 when math-verify finds the gold ``answer_column`` value as the completion's final answer."""
    from testtime.tasks.gsm8k import answers_match

    def math_reward(prompts: Sequence[Any] | None, completions: Sequence[Any], **columns: Any) -> list[float]:
        if answer_column not in columns:
            raise ValueError(f"math reward needs the column {answer_column!r} (gold answers)")
        golds = columns[answer_column]
        return [
            1.0 if answers_match(answer_text(completion_text(c)), str(g))[0] else 0.0
            for c, g in zip(completions, golds, strict=True)
        ]

    return math_reward


_SCRIPTS = {
    "en": re.compile(r"^[A-Za-z][A-Za-z'\-]*$"),
    "zh": re.compile(r"^[\u4e00-\u9fff]+$"),
}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def language_consistency_reward(language: str = "en") -> RewardFn:
    """R1's language consistency reward: the share of the chain of thought's words in ``language``.

    Words are runs of letters (digits and symbols ignored) in the ``<think>`` block (the whole completion
    when there is none); a word counts as the target language when it is written in its script (``en``:
    ASCII Latin letters; ``zh``: CJK ideographs, each run a word). No words: 1.0.
    """
    if language not in _SCRIPTS:
        raise ValueError(f"language must be one of {sorted(_SCRIPTS)}, got {language!r}")
    script = _SCRIPTS[language]

    def language_consistency(
        prompts: Sequence[Any] | None, completions: Sequence[Any], **_: Any
    ) -> list[float]:
        out = []
        for completion in completions:
            text = completion_text(completion)
            start, end = text.find("<think>"), text.find("</think>")
            if end >= 0:
                text = text[start + len("<think>") if 0 <= start < end else 0 : end]
            words = _WORD.findall(text)
            out.append(1.0 if not words else sum(bool(script.match(w)) for w in words) / len(words))
        return out

    return language_consistency


def _lengths(completions: Sequence[Any], columns: dict[str, Any]) -> list[int]:
    ids = columns.get("completion_ids")
    if ids is None:
        raise ValueError("length rewards need the column 'completion_ids' (token ids; the trainer passes it)")
    if len(ids) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(ids)} completion_ids")
    return [len(row) for row in ids]


def overlong_reward(*, max_completion_length: int, cache_length: int) -> RewardFn:
    """DAPO's soft overlong punishment (eq. 13) on each completion's token count."""
    overlong_penalty([], max_completion_length=max_completion_length, cache_length=cache_length)  # validates

    def overlong(prompts: Sequence[Any] | None, completions: Sequence[Any], **columns: Any) -> list[float]:
        return overlong_penalty(
            _lengths(completions, columns),
            max_completion_length=max_completion_length,
            cache_length=cache_length,
        )

    return overlong


def length_penalty(*, target_tokens: int, coefficient: float = 1.0) -> RewardFn:
    """``-coefficient * max(0, length - target) / target`` per completion (token counts)."""
    if target_tokens < 1:
        raise ValueError("target_tokens must be >= 1")

    def length(prompts: Sequence[Any] | None, completions: Sequence[Any], **columns: Any) -> list[float]:
        return [
            -coefficient * max(0, n - target_tokens) / target_tokens for n in _lengths(completions, columns)
        ]

    return length


def resolve_rewards(
    spec: str, *, task: Task | None = None, max_completion_length: int = 256
) -> list[RewardFn]:
    """Reward functions from a comma-separated spec (the CLI's ``--rewards``).

    Names: ``accuracy`` (binary, needs ``task``), ``graded`` (the task's graded score), ``format``,
    ``tags`` (partial format credit), ``language`` (English), ``overlong`` (cache = a quarter of ``max_completion_length``), ``math``.

    Raises:
        ValueError: an unknown name, or ``accuracy``/``graded`` without a task.
    """
    out: list[RewardFn] = []
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            continue
        if name in ("accuracy", "graded"):
            if task is None:
                raise ValueError(f"reward {name!r} needs a task")
            out.append(accuracy_reward(task, graded=name == "graded"))
        elif name == "format":
            out.append(format_reward())
        elif name == "tags":
            out.append(tag_count_reward())
        elif name == "language":
            out.append(language_consistency_reward("en"))
        elif name == "overlong":
            out.append(
                overlong_reward(
                    max_completion_length=max_completion_length,
                    cache_length=max(1, max_completion_length // 4),
                )
            )
        elif name == "math":
            out.append(math_reward())
        else:
            raise ValueError(
                f"unknown reward {name!r}; choose from accuracy, graded, format, tags, language, overlong, math"
            )
    if not out:
        raise ValueError("no reward functions given")
    return out
