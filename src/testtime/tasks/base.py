"""The one task interface: instances, prompts and verdicts, shared by search, RL rewards and evaluation.

A :class:`Task` produces problem :class:`Instance` objects (generated from a seed, or drawn from a bundled
data set), renders each as a prompt, and checks an answer text, returning a :class:`Verdict`:

- ``score``: a float in [0, 1], higher is better, 1.0 exactly when ``solved``; Mind Evolution's fitness,
  GRPO's / SVF's reward and evaluation's partial credit;
- ``feedback``: text naming what is wrong (each violated constraint), for Mind Evolution's refinement
  prompts; empty or a short confirmation when solved;
- ``solved``: the benchmark's success criterion (accuracy counts these).

Every ``verify`` accepts arbitrary text (an LLM's raw output) and never raises on it: :class:`Task` wraps
each subclass's ``verify`` so that a non-string answer counts as empty, answers longer than
:data:`MAX_ANSWER` characters are cut to their end, decimal digits of every script are read as ASCII
digits (tasks with ``numeric = True``, the default), feedback is capped at :data:`MAX_FEEDBACK` characters,
and an exception inside a verifier becomes a 0-score verdict (with a warning and ``details["error"]``)
instead of reaching the caller.

Determinism: ``instances(split, seed=s, n=k)`` returns the same instances for the same arguments in every
process; instance ``i`` of a seed does not depend on ``n``.

The registry maps task names (``meeting-planning``, ``countdown``, ...) to classes, imported lazily so that
``import testtime.tasks`` stays light; :func:`register_task` adds a user's own task and
:func:`task_from_function` wraps a plain ``(instance, answer) -> (score, feedback, solved)`` function.
:func:`as_reward_fn` adapts a task to TRL's reward-function convention.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import math
import random
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from testtime.errors import UserError

__all__ = [
    "FunctionTask",
    "Instance",
    "Task",
    "Verdict",
    "as_reward_fn",
    "completion_text",
    "content_hash",
    "get_task",
    "list_tasks",
    "register_task",
    "split_of_content",
    "task_from_function",
]


MAX_ANSWER = 1_000_000  # characters of an answer a verifier sees (the end of it)
MAX_FEEDBACK = 2_000  # characters of feedback


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """The result of checking one answer.

    Attributes:
        score: in [0, 1], higher is better; 1.0 exactly when ``solved``.
        feedback: what is wrong with the answer (one line per violated constraint), or a confirmation.
        solved: whether the answer meets the benchmark's success criterion.
        details: task-specific numbers (raw counts, parsed values) for logging; JSON-serialisable.
    """

    score: float
    feedback: str
    solved: bool
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.score, (int, float)) or not 0.0 <= self.score <= 1.0:
            raise ValueError(f"Verdict score must be a number in [0, 1], got {self.score!r}")
        if bool(self.solved) != (self.score == 1.0):
            raise ValueError(
                f"Verdict score must be 1.0 exactly when solved (score {self.score}, solved {self.solved})"
            )

    def to_dict(self) -> dict[str, Any]:
        """``{"score", "solved", "feedback", "details"}`` for JSON output."""
        return {
            "score": self.score,
            "solved": self.solved,
            "feedback": self.feedback,
            "details": dict(self.details),
        }


@dataclass(frozen=True, kw_only=True)
class Instance:
    """One problem.

    Attributes:
        task: the task's registry name.
        id: unique within the task and split (e.g. ``"seed3-0"`` or a data set's own id).
        data: the problem itself, JSON-serialisable (what ``verify`` needs: constraints, gold answer, ...).
        reference: an answer text that verifies as solved (the exact solver's plan or the gold answer),
            or None where the task has none (e.g. StegPoet needs a poem).
    """

    task: str
    id: str
    data: Mapping[str, Any]
    reference: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_dict` inverts it."""
        return {"task": self.task, "id": self.id, "data": self.data, "reference": self.reference}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Instance:
        """Rebuild an instance from :meth:`to_dict` output (or its JSON string)."""
        return cls(task=value["task"], id=value["id"], data=value["data"], reference=value.get("reference"))


def seeded_subset(count: int, seed: int, n: int | None) -> list[int]:
    """Indices of the first ``n`` items (all when None) of ``range(count)`` shuffled by ``seed``.

    A fixed data set's instances for a seed: the same seed gives the same order, and item i does not depend
    on ``n``.
    """
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order[: count if n is None else n]


def _instance_rng(
    name: str, split: str, seed: int, index: int, difficulty: Mapping[str, Any], attempt: int = 0
) -> random.Random:
    """A generator seeded by a string: Python hashes str seeds with SHA-512, so it is stable across runs."""
    knobs = ",".join(f"{k}={difficulty[k]}" for k in sorted(difficulty))
    retry = f"|retry{attempt}" if attempt else ""
    return random.Random(f"{name}|{split}|{seed}|{index}|{knobs}{retry}")


TRAIN_BUCKETS = 16  # generated content whose hash is 0 modulo this belongs to train, the rest to test
_MAX_ATTEMPTS = 400


def content_hash(data: Mapping[str, Any]) -> str:
    """SHA-256 of an instance's data as canonical JSON (sorted keys): what makes two instances the same."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def split_of_content(data: Mapping[str, Any]) -> str:
    """``"train"`` or ``"test"``: the split a generated problem belongs to, decided by its content alone, so
    the two splits can never share a problem (1 in :data:`TRAIN_BUCKETS` contents is train)."""
    return "train" if int(content_hash(data)[:8], 16) % TRAIN_BUCKETS == 0 else "test"


class Task(ABC):
    """A verifiable task. Subclasses set the class attributes and implement the abstract methods.

    Class attributes:
        name: registry name, e.g. ``"countdown"``.
        description: one line for ``testtime tasks list``.
        splits: the splits ``instances`` accepts; the first is the default.
        difficulty: the difficulty knobs and their defaults (generated tasks), e.g. ``{"num_people": 4}``.
        difficulty_min: the smallest value of a knob where it is not 1.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    numeric: ClassVar[bool] = True  # read every script's decimal digits as ASCII digits before verifying
    splits: ClassVar[tuple[str, ...]] = ("test",)
    difficulty: ClassVar[Mapping[str, int]] = {}
    difficulty_min: ClassVar[Mapping[str, int]] = {}  # the smallest allowed value of a knob (default 1)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "verify" in cls.__dict__ and not getattr(cls.__dict__["verify"], "_guarded", False):
            cls.verify = _guard_verify(cls.__dict__["verify"])  # type: ignore[method-assign]

    # -- instances ---------------------------------------------------------------------------------------
    def instances(
        self, split: str | None = None, *, seed: int = 0, n: int | None = None, **difficulty: int
    ) -> list[Instance]:
        """Deterministic problem instances.

        Generated tasks build instance ``i`` from a generator seeded by ``(name, split, seed, i,
        difficulty)``, so it does not depend on ``n``. Data-set tasks shuffle the split by ``seed`` and
        take the first ``n``.

        Args:
            split: one of ``self.splits`` (default: the first).
            seed: the seed.
            n: how many (generated tasks: default 1; data sets: default all).
            **difficulty: difficulty knobs overriding ``self.difficulty`` (generated tasks only).

        Returns:
            A list of instances.

        Raises:
            UserError: unknown split, knob or a knob value out of range.
        """
        split = self._check_split(split)
        knobs = self._check_difficulty(difficulty)
        if n is not None and n < 0:
            raise UserError(f"n must be >= 0, got {n}")
        return self._instances(split=split, seed=seed, n=n, difficulty=knobs)

    def _instances(
        self, *, split: str, seed: int, n: int | None, difficulty: Mapping[str, int]
    ) -> list[Instance]:
        """Default for generated tasks: ``n`` calls of :meth:`generate` with per-index generators.

        With both a ``train`` and a ``test`` split, the splits are disjoint by construction: the split is
        in the generator's seed and in train ids (``train-seed{s}-{i}``), and a problem is kept only when
        its content hash puts it in the requested split (:func:`split_of_content`); otherwise the same index
        draws again from a new stream.
        """
        partition = "train" in self.splits and "test" in self.splits
        out = []
        for i in range(1 if n is None else n):
            for attempt in range(_MAX_ATTEMPTS):
                rng = _instance_rng(self.name, split, seed, i, difficulty, attempt)
                instance = self.generate(rng, index=i, seed=seed, **difficulty)
                if not partition or split_of_content(instance.data) == split:
                    break
            else:
                raise UserError(
                    f"{self.name}: no {split} problem found at this difficulty ({dict(difficulty)}) that is "
                    "disjoint from the other split; the problem space is too small"
                )
            if split == "train":
                instance = dataclasses.replace(instance, id=f"train-{instance.id}")
            out.append(instance)
        return out

    def generate(self, rng: random.Random, *, index: int, seed: int, **difficulty: int) -> Instance:
        """Build one instance from ``rng`` (generated tasks override this)."""
        raise NotImplementedError(f"{self.name} is not a generated task")

    def _check_split(self, split: str | None) -> str:
        if split is None:
            return self.splits[0]
        if split not in self.splits:
            raise UserError(f"task {self.name!r} has splits {list(self.splits)}, not {split!r}")
        return split

    def _check_difficulty(self, difficulty: Mapping[str, int]) -> dict[str, int]:
        unknown = sorted(set(difficulty) - set(self.difficulty))
        if unknown:
            known = ", ".join(self.difficulty) or "none"
            raise UserError(f"task {self.name!r} has no difficulty knob(s) {unknown}; knobs: {known}")
        knobs = {**self.difficulty, **{k: int(v) for k, v in difficulty.items()}}
        for key, value in knobs.items():
            low = self.difficulty_min.get(key, 1)
            if value < low:
                raise UserError(f"difficulty {key} must be >= {low}, got {value}")
        return knobs

    # -- prompts and verification --------------------------------------------------------------------
    @abstractmethod
    def prompt(self, instance: Instance) -> str:
        """The problem as one user message, including the expected answer format."""

    def messages(self, instance: Instance) -> list[dict[str, str]]:
        """The prompt as chat messages (default: one user message)."""
        return [{"role": "user", "content": self.prompt(instance)}]

    @abstractmethod
    def verify(self, instance: Instance, answer: str) -> Verdict:
        """Check an answer text; never raises on arbitrary text."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _guard_verify(
    verify: Callable[[Task, Instance, str], Verdict],
) -> Callable[[Task, Instance, str], Verdict]:
    """``verify`` made total: bounded, normalised input; a clear 0 verdict instead of an exception."""

    @functools.wraps(verify)
    def guarded(self: Task, instance: Instance, answer: str) -> Verdict:
        from testtime.tasks.parsing import excerpt, normalize_digits

        if isinstance(answer, (bytes, bytearray)):
            answer = bytes(answer[-MAX_ANSWER * 4 :]).decode("utf-8", errors="replace")
        text = answer[-MAX_ANSWER:] if isinstance(answer, str) else ""
        try:
            if getattr(self, "numeric", True):
                text = normalize_digits(text)
            verdict = verify(self, instance, text)
            if not isinstance(verdict, Verdict):
                raise TypeError(f"verify returned {type(verdict).__name__}, not a Verdict")
        except Exception as exc:  # noqa: BLE001  (the contract: verify never raises on an answer)
            message = f"{type(exc).__name__}: {excerpt(str(exc), 200)}"
            warnings.warn(
                f"{self.name}: the verifier failed on an answer ({message})", RuntimeWarning, stacklevel=2
            )
            return Verdict(
                score=0.0,
                solved=False,
                feedback="The answer could not be checked.",
                details={"error": message},
            )
        if len(verdict.feedback) > MAX_FEEDBACK:
            verdict = Verdict(
                score=verdict.score,
                solved=verdict.solved,
                feedback=verdict.feedback[: MAX_FEEDBACK - 4] + " ...",
                details=verdict.details,
            )
        return verdict

    guarded._guarded = True  # type: ignore[attr-defined]
    return guarded


# -- wrapping a user's function --------------------------------------------------------------------------
VerifyFn = Callable[[Instance, str], "tuple[float, str, bool] | Verdict"]


class FunctionTask(Task):
    """A task built from a verification function and a fixed list of instances or a generator function.

    Args:
        name: the task's name.
        verify_fn: ``(instance, answer) -> (score, feedback, solved)`` (or a :class:`Verdict`); the score
            is clipped to [0, 1].
        instances: a fixed sequence of instances (or dicts with ``data``, optionally ``id`` and
            ``reference``), or a function ``(rng, index) -> data dict`` that generates one.
        prompt_fn: ``instance -> prompt``; default: ``instance.data["prompt"]``.
        description: one line for listings.
    """

    def __init__(
        self,
        name: str,
        verify_fn: VerifyFn,
        *,
        instances: Sequence[Instance | Mapping[str, Any]] | Callable[[random.Random, int], Mapping[str, Any]],
        prompt_fn: Callable[[Instance], str] | None = None,
        description: str = "",
    ) -> None:
        self.name = name  # type: ignore[misc]  # instance attribute shadows the ClassVar on purpose
        self.description = description or f"user task {name}"  # type: ignore[misc]
        self._verify_fn = verify_fn
        self._prompt_fn = prompt_fn
        self._fixed: list[Instance] | None = None
        self._generator: Callable[[random.Random, int], Mapping[str, Any]] | None = None
        if callable(instances):
            self._generator = instances
        else:
            self._fixed = [self._coerce(item, i) for i, item in enumerate(instances)]

    def _coerce(self, item: Instance | Mapping[str, Any], index: int) -> Instance:
        if isinstance(item, Instance):
            return item
        data = item.get("data", item)
        return Instance(
            task=self.name, id=str(item.get("id", index)), data=data, reference=item.get("reference")
        )

    def _instances(
        self, *, split: str, seed: int, n: int | None, difficulty: Mapping[str, int]
    ) -> list[Instance]:
        if self._fixed is not None:
            return [self._fixed[i] for i in seeded_subset(len(self._fixed), seed, n)]
        assert self._generator is not None
        out = []
        for i in range(1 if n is None else n):
            data = self._generator(_instance_rng(self.name, split, seed, i, difficulty), i)
            out.append(Instance(task=self.name, id=f"seed{seed}-{i}", data=data))
        return out

    def prompt(self, instance: Instance) -> str:
        if self._prompt_fn is not None:
            return self._prompt_fn(instance)
        return str(instance.data.get("prompt", ""))

    def verify(self, instance: Instance, answer: str) -> Verdict:
        result = self._verify_fn(instance, answer)
        if isinstance(result, Verdict):
            return result
        score, feedback, solved = result
        score = 1.0 if solved else min(max(float(score), 0.0), math.nextafter(1.0, 0.0))
        return Verdict(score=score, feedback=str(feedback), solved=bool(solved))


def task_from_function(
    name: str,
    verify_fn: VerifyFn,
    *,
    instances: Sequence[Instance | Mapping[str, Any]] | Callable[[random.Random, int], Mapping[str, Any]],
    prompt_fn: Callable[[Instance], str] | None = None,
    description: str = "",
    register: bool = False,
) -> FunctionTask:
    """Wrap a plain verification function as a :class:`Task` (see :class:`FunctionTask` for the arguments).

    Args:
        register: also add it to the registry under ``name``.

    Returns:
        The task.
    """
    task = FunctionTask(name, verify_fn, instances=instances, prompt_fn=prompt_fn, description=description)
    if register:
        register_task(name, lambda: task)
    return task


# -- the registry ----------------------------------------------------------------------------------------
# Built-in tasks, imported on first use: name -> "module:Class".
_BUILTIN: dict[str, str] = {
    "meeting-planning": "testtime.tasks.natural_plan:MeetingPlanning",
    "trip-planning": "testtime.tasks.natural_plan:TripPlanning",
    "calendar-scheduling": "testtime.tasks.natural_plan:CalendarScheduling",
    "stegpoet": "testtime.tasks.stegpoet:StegPoet",
    "travelplanner": "testtime.tasks.travelplanner:TravelPlanner",
    "countdown": "testtime.tasks.arithmetic:Countdown",
    "arithmetic": "testtime.tasks.arithmetic:Arithmetic",
    "arc-easy": "testtime.tasks.arc:ArcEasy",
    "arc-challenge": "testtime.tasks.arc:ArcChallenge",
    "gsm8k": "testtime.tasks.gsm8k:GSM8K",
    "humaneval": "testtime.tasks.humaneval:HumanEval",
    "reading": "testtime.tasks.reading:Reading",
}
_USER: dict[str, Callable[[], Task]] = {}


def register_task(name: str, factory: Callable[[], Task] | type[Task]) -> None:
    """Add a task to the registry (a user's own class or a function building one); replaces a user entry.

    Raises:
        ValueError: the name belongs to a built-in task.
    """
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in task name")
    _USER[name] = factory


def list_tasks(*, include_user: bool = True) -> list[str]:
    """Names of all registered tasks: the built-in ones in a fixed order, then the user's (unless
    ``include_user`` is False)."""
    return list(_BUILTIN) + (sorted(_USER) if include_user else [])


def get_task(name: str) -> Task:
    """A fresh task object by name.

    Raises:
        UserError: no such task (the message lists the names).
    """
    if name in _USER:
        return _USER[name]()
    if name not in _BUILTIN:
        raise UserError(f"unknown task {name!r}; tasks: {', '.join(list_tasks())}")
    module_name, class_name = _BUILTIN[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()


# -- TRL-style reward functions --------------------------------------------------------------------------
def completion_text(completion: Any) -> str:
    """The answer text of a completion: a string, or a chat completion (list of messages: the last one's
    content; a message dict: its content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion.get("content", ""))
    if isinstance(completion, Sequence) and completion:
        return completion_text(completion[-1])
    return ""


def _as_instance(value: Any) -> Instance:
    if isinstance(value, Instance):
        return value
    if isinstance(value, str):
        value = json.loads(value)
    return Instance.from_dict(value)


def as_reward_fn(task: Task, *, instance_column: str = "instance") -> Callable[..., list[float]]:
    """A reward function in TRL's convention, ``(prompts, completions, **columns) -> list[float]``.

    The data set must carry each row's instance in the column ``instance_column`` (an :class:`Instance`,
    its ``to_dict()``, or that dict as a JSON string); the reward is the verdict's score.

    Args:
        task: the task.
        instance_column: the name of the column holding the instances.

    Returns:
        The reward function (its ``__name__`` is ``"<task>_reward"``, as TRL logs it).
    """

    def reward(prompts: Iterable[Any] | None, completions: Sequence[Any], **columns: Any) -> list[float]:
        if instance_column not in columns:
            raise ValueError(f"reward for {task.name!r} needs the column {instance_column!r} (the instances)")
        instances = columns[instance_column]
        if len(instances) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(instances)} instances")
        return [
            task.verify(_as_instance(inst), completion_text(comp)).score
            for inst, comp in zip(instances, completions, strict=True)
        ]

    reward.__name__ = f"{task.name.replace('-', '_')}_reward"
    return reward
