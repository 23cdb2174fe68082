"""What every search method shares: candidates, evaluators, and the session that asks, scores and logs.

A :class:`Session` turns one planned LLM call into one scored :class:`Candidate`:

1. :meth:`Session.plan` (synchronous, called in the run's deterministic order) gives the call its ``seq``
   and reserves budget for it, or answers None when a cap would be passed (the run then ends cleanly);
   a call already in a resumed log reserves exactly what it cost then;
2. :meth:`Session.run` (a coroutine; many run concurrently under ``asyncio.gather``) asks the LLM, retrying
   a failed call up to ``num_retries`` times (each attempt is a call and needs budget), extracts the
   author's answer, verifies it in a worker thread (``asyncio.to_thread``: a slow verifier never stalls
   sampling) and appends the candidate to the log as soon as it exists.

A failed call (an exception of the backend), an empty, huge or unparseable answer, and an evaluator that
raises all give a *failed candidate* (score 0, the reason as feedback): they never end a run.
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from testtime.evolve.cost import Budget, Cost, CostTracker, Reservation, prompt_token_bound
from testtime.evolve.log import RunLog
from testtime.evolve.prompts import Parent, extract_answer
from testtime.llm.protocol import BaseLLM, Message, SamplingParams

__all__ = [
    "Candidate",
    "Evaluator",
    "RunResult",
    "Session",
    "evaluate_safely",
    "task_evaluator",
]

Evaluator = Callable[[str], Any]
_BELOW_ONE = math.nextafter(1.0, 0.0)  # answer -> (score, feedback, solved) or a testtime.tasks.Verdict


def task_evaluator(task: Any, instance: Any) -> Evaluator:
    """An evaluator for one instance of a :class:`testtime.tasks.Task`: ``answer -> task.verify(...)``."""

    def evaluate(answer: str) -> Any:
        return task.verify(instance, answer)

    return evaluate


def evaluate_safely(evaluator: Evaluator, answer: str) -> tuple[float, str, bool]:
    """``(score, feedback, solved)`` from a user's evaluator, never raising: a raised error, a score that is
    not a finite number, or a malformed result gives a failed verdict naming the problem. As for
    ``testtime.tasks`` verdicts, a solved answer scores 1 and an unsolved one is clipped to [0, 1)."""
    try:
        result = evaluator(answer)
        if hasattr(result, "score") and hasattr(result, "solved"):
            score, feedback, solved = result.score, getattr(result, "feedback", ""), result.solved
        else:
            score, feedback, solved = result
        score = float(score)
        if not math.isfinite(score):
            return 0.0, f"evaluator error: score {score} is not a finite number", False
        if bool(solved):
            return 1.0, str(feedback), True
        return min(max(score, 0.0), _BELOW_ONE), str(feedback), False
    except Exception as exc:  # noqa: BLE001 - a user's evaluator may fail in any way
        return 0.0, f"evaluator error: {type(exc).__name__}: {exc}", False


@dataclass(kw_only=True)
class Candidate:
    """One LLM answer with its evaluation (one ``candidate`` record of the log).

    Attributes:
        id: deterministic id, e.g. ``g2-i1-c3-t0`` (generation, island, conversation, turn).
        seq: the place in the run's deterministic order.
        text: the raw LLM response; ``answer``: the author's solution extracted from it.
        score, feedback, solved: the evaluator's verdict (0, the reason, False for a failed candidate).
        parents: ids of the candidates shown in its prompt.
        island, generation, conversation, turn: where it was made (None where not applicable).
        prompt: the messages sent.
        error: why the candidate failed (None when the LLM answered).
        attempts: LLM calls spent on it (1 + retries).
    """

    id: str
    seq: int
    kind: str = "candidate"
    text: str = ""
    answer: str = ""
    score: float = 0.0
    feedback: str = ""
    solved: bool = False
    parents: list[str] = field(default_factory=list)
    island: int | None = None
    generation: int | None = None
    conversation: int | None = None
    turn: int | None = None
    prompt: list[Message] = field(default_factory=list)
    error: str | None = None
    attempts: int = 1
    input_tokens: int = 0
    output_tokens: int = 0
    start: float = 0.0
    end: float = 0.0

    def as_parent(self) -> Parent:
        return Parent(answer=self.answer, score=self.score, feedback=self.feedback)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Candidate:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in record.items() if k in names})


@dataclass(kw_only=True)
class RunResult:
    """The outcome of one search run.

    Attributes:
        method: the method's name.
        solved: whether a candidate solved the problem.
        best: the best candidate (highest score, earliest on ties), None when no call was made.
        candidates: every candidate in ``seq`` order (reset selections excluded).
        cost: calls, tokens, wall time (overlaps counted once) and price.
        calls_to_solve: LLM calls spent up to and including the first solved candidate (``seq`` order).
        stopped: ``"solved"``, ``"budget"`` or ``"done"``.
        log_path: the JSONL log, when written.
    """

    method: str
    solved: bool
    best: Candidate | None
    candidates: list[Candidate]
    cost: Cost
    calls_to_solve: int | None
    stopped: str
    log_path: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "solved": self.solved,
            "best_score": None if self.best is None else self.best.score,
            "best_id": None if self.best is None else self.best.id,
            "calls_to_solve": self.calls_to_solve,
            "stopped": self.stopped,
            "candidates": len(self.candidates),
            **self.cost.as_dict(),
        }


@dataclass(kw_only=True)
class Planned:
    """A call with its seq and reserved budget (or its logged result)."""

    id: str
    seq: int
    messages: list[Message]
    reservations: list[Reservation]
    cached: dict[str, Any] | None = None


def _seed_for(seed: int, key: str) -> int:
    return zlib.crc32(f"{seed}|{key}".encode()) & 0x7FFFFFFF


class Session:
    """Asks, scores and logs the calls of one run (see the module docstring).

    Args:
        llm: the backend.
        evaluator: ``answer -> (score, feedback, solved)`` or a Verdict.
        params: sampling parameters (``n`` is forced to 1; each call gets its own seed from ``seed``).
        budget: caps and prices.
        log: the run log (its cached records answer calls of a resumed run).
        seed: the run's seed.
        marker: the author's solution marker (see :func:`~testtime.evolve.prompts.extract_answer`).
        max_answer_chars: longer answers are failed candidates.
        num_retries: retries of a failed call.
        on_candidate: called with every new candidate (progress bars).
        concurrent: issue the calls of a turn concurrently (False: one after another, in the same order
            and with the same results for a deterministic backend; the benchmark's peer).
    """

    def __init__(
        self,
        llm: BaseLLM,
        evaluator: Evaluator,
        *,
        params: SamplingParams,
        budget: Budget | None = None,
        log: RunLog,
        seed: int = 0,
        marker: str = "PROPOSED SOLUTION:",
        max_answer_chars: int = 20_000,
        num_retries: int = 0,
        on_candidate: Callable[[Candidate], None] | None = None,
        concurrent: bool = True,
    ) -> None:
        self.llm = llm
        self.concurrent = concurrent
        self.evaluator = evaluator
        self.params = params.with_(n=1)
        self.tracker = CostTracker(budget=budget or Budget())
        self.log = log
        self.seed = seed
        self.marker = marker
        self.max_answer_chars = max_answer_chars
        self.num_retries = num_retries
        self.on_candidate = on_candidate
        self.candidates: list[Candidate] = []
        self._seq = 0

    @property
    def exhausted(self) -> bool:
        """Whether a reservation was refused (the budget is spent)."""
        return self.tracker.exhausted

    def _token_bound(self, messages: Sequence[Message]) -> int:
        if self.tracker.budget.max_tokens is None:
            return 0
        return prompt_token_bound(list(messages), self.llm) + self.params.max_tokens

    def plan(self, call_id: str, messages: Sequence[Message]) -> Planned | None:
        """Give a call its seq and reserve its budget (synchronously, in deterministic order); None when the
        budget is spent."""
        seq = self._seq
        cached = self.log.cached.get(call_id)
        if cached is not None:
            attempts = int(cached.get("attempts", 1))
            tokens = int(cached.get("input_tokens", 0)) + int(cached.get("output_tokens", 0))
            reservations = []
            for attempt in range(attempts):
                reservation = self.tracker.reserve(tokens if attempt == 0 else 0)
                if reservation is None:
                    for held in reservations:
                        self.tracker.commit(held, input_tokens=0, output_tokens=0, interval=None)
                    return None
                reservations.append(reservation)
            self._seq += 1
            return Planned(
                id=call_id, seq=seq, messages=list(messages), reservations=reservations, cached=cached
            )
        reservation = self.tracker.reserve(self._token_bound(messages))
        if reservation is None:
            return None
        self._seq += 1
        return Planned(id=call_id, seq=seq, messages=list(messages), reservations=[reservation])

    async def ask(self, planned: Planned) -> tuple[str, str | None, int, int, int, float, float]:
        """Ask the LLM (with retries while budget allows): (text, error, attempts, input, output, start, end)."""
        text, error = "", None
        attempts = input_tokens = output_tokens = 0
        start = time.time()
        reservation: Reservation | None = planned.reservations[0]
        while reservation is not None:
            attempts += 1
            call_start = time.time()
            used_in = used_out = 0
            try:
                params = self.params.with_(seed=_seed_for(self.seed, f"{planned.id}|{attempts}"))
                out = await self.llm.agenerate([planned.messages], params)
                completion = out[0][0]
                text = completion.text if isinstance(completion.text, str) else ""
                used_in, used_out = int(completion.prompt_tokens), int(completion.completion_tokens)
                error = None if text.strip() else "empty answer"
            except Exception as exc:  # noqa: BLE001 - a backend may fail in any way; the run goes on
                text, error = "", f"LLM error: {type(exc).__name__}: {exc}"
            input_tokens += used_in
            output_tokens += used_out
            self.tracker.commit(
                reservation, input_tokens=used_in, output_tokens=used_out, interval=(call_start, time.time())
            )
            reservation = None
            if error is not None and attempts <= self.num_retries:
                reservation = self.tracker.reserve(self._token_bound(planned.messages))
        return text, error, attempts, input_tokens, output_tokens, start, time.time()

    async def run(self, planned: Planned, **meta: Any) -> Candidate:
        """Ask, extract, verify and log one candidate (or replay it from the log)."""
        if planned.cached is not None:
            record = planned.cached
            attempts = len(planned.reservations)
            for index, reservation in enumerate(planned.reservations):
                self.tracker.commit(
                    reservation,
                    input_tokens=int(record.get("input_tokens", 0)) if index == 0 else 0,
                    output_tokens=int(record.get("output_tokens", 0)) if index == 0 else 0,
                    interval=(record.get("start", 0.0), record.get("end", 0.0)) if index == 0 else None,
                    cached=True,
                )
            candidate = Candidate.from_record(record)
            assert candidate.attempts == attempts
            self.candidates.append(candidate)
            return candidate
        text, error, attempts, input_tokens, output_tokens, start, end = await self.ask(planned)
        answer = extract_answer(text, self.marker) if error is None else ""
        if error is None and len(answer) > self.max_answer_chars:
            error = f"answer of {len(answer)} characters exceeds the limit of {self.max_answer_chars}"
            answer = answer[: self.max_answer_chars]
        if meta.get("kind", "candidate") != "candidate":
            score, feedback, solved = 0.0, "" if error is None else error, False
        elif error is None:
            score, feedback, solved = await asyncio.to_thread(evaluate_safely, self.evaluator, answer)
        else:
            score, feedback, solved = 0.0, f"no valid answer ({error})", False
        candidate = Candidate(
            id=planned.id,
            seq=planned.seq,
            text=text,
            answer=answer,
            score=score,
            feedback=feedback,
            solved=solved,
            prompt=planned.messages,
            error=error,
            attempts=attempts,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            start=start,
            end=end,
            **meta,
        )
        self.log.append(candidate.to_record())
        self.candidates.append(candidate)
        if self.on_candidate is not None:
            self.on_candidate(candidate)
        return candidate

    async def gather(self, coroutines: Sequence[Any]) -> list[Candidate]:
        """Await the calls of one turn: concurrently (``asyncio.gather``) or one after another."""
        if self.concurrent:
            return list(await asyncio.gather(*coroutines))
        return [await coroutine for coroutine in coroutines]

    def result(self, method: str, stopped: str) -> RunResult:
        """The run's result from the candidates made so far."""
        ordered = sorted((c for c in self.candidates if c.kind == "candidate"), key=lambda c: c.seq)
        every = sorted(self.candidates, key=lambda c: c.seq)
        best = min(ordered, key=lambda c: (-c.score, c.seq), default=None)
        calls_to_solve, calls = None, 0
        for cand in every:
            calls += cand.attempts
            if cand.kind == "candidate" and cand.solved:
                calls_to_solve = calls
                break
        return RunResult(
            method=method,
            solved=calls_to_solve is not None,
            best=best,
            candidates=ordered,
            cost=self.tracker.cost(),
            calls_to_solve=calls_to_solve,
            stopped=stopped,
            log_path=None if self.log.path is None else str(self.log.path),
        )
