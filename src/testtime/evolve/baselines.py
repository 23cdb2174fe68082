"""The paper's baselines (Lee et al., arXiv 2501.09891, §4, "Baselines"), run through the same session,
budget and log as Mind Evolution so that every method is compared at equal cost:

- **1-Pass**: one answer to the problem.
- **Best-of-N**: up to N independent answers to the problem (the paper: N = 800, the most candidates Mind
  Evolution makes with Table 1), stopping at the first solved one. Calls are issued in waves of
  ``wave_size`` concurrent calls; the stop is checked after each wave.
- **Sequential-Revision+**: ``num_threads`` independent proposals (the paper: 10), each revised separately
  for ``num_turns`` turns (the paper: 80, so 800 candidates) with RCC's critic and the evaluator's feedback,
  stopping at the first solved candidate. The paper does not say how much of an 80-turn conversation stays
  in context; here each turn sees the first message and the last ``history_turns`` exchanges (option).
  The threads advance turn by turn together, each turn's calls concurrent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from testtime.errors import UserError
from testtime.evolve.core import Candidate, Evaluator, RunResult, Session
from testtime.evolve.cost import Budget
from testtime.evolve.log import RunLog
from testtime.evolve.mind_evolution import DEFAULT_PARAMS, _params_dict
from testtime.evolve.prompts import plain_messages, rcc_first_message, revision_message
from testtime.llm.protocol import BaseLLM, SamplingParams

__all__ = ["BestOfN", "OnePass", "SequentialRevision"]


class _Method:
    name = ""
    marker = "PROPOSED SOLUTION:"

    def settings(self) -> dict[str, Any]:
        return asdict(self) if hasattr(self, "__dataclass_fields__") else {}

    def run(self, llm: BaseLLM, problem: str, evaluator: Evaluator, **kwargs: Any) -> RunResult:
        """Synchronous :meth:`arun`."""
        return asyncio.run(self.arun(llm, problem, evaluator, **kwargs))

    async def arun(
        self,
        llm: BaseLLM,
        problem: str,
        evaluator: Evaluator,
        *,
        seed: int = 0,
        budget: Budget | None = None,
        params: SamplingParams | None = None,
        log_path: str | None = None,
        on_candidate: Callable[[Candidate], None] | None = None,
        concurrent: bool = True,
    ) -> RunResult:
        """Run the method (arguments as :meth:`testtime.evolve.MindEvolution.arun`)."""
        params = params or DEFAULT_PARAMS
        header = {
            "method": self.name,
            "settings": self.settings(),
            "seed": seed,
            "problem": problem,
            "sampling": _params_dict(params),
        }
        session = Session(
            llm,
            evaluator,
            params=params,
            budget=budget,
            log=RunLog(log_path, header),
            seed=seed,
            marker=self.marker,
            num_retries=getattr(self, "num_retries", 0),
            on_candidate=on_candidate,
            concurrent=concurrent,
        )
        stopped = await self._search(session, problem)
        return session.result(self.name, stopped)

    async def _search(self, session: Session, problem: str) -> str:
        raise NotImplementedError


@dataclass(kw_only=True)
class OnePass(_Method):
    """One answer (the paper's 1-Pass)."""

    name = "one-pass"
    num_retries: int = 0

    async def _search(self, session: Session, problem: str) -> str:
        call = session.plan("p0", plain_messages(problem))
        if call is None:
            return "budget"
        candidate = await session.run(call)
        return "solved" if candidate.solved else "done"


@dataclass(kw_only=True)
class BestOfN(_Method):
    """Up to ``n`` independent answers, stopping at the first solved one (the paper's Best-of-N)."""

    name = "best-of-n"
    n: int = 800
    wave_size: int = 8
    num_retries: int = 0

    def __post_init__(self) -> None:
        if self.n < 1 or self.wave_size < 1:
            raise UserError("Best-of-N needs n >= 1 and wave_size >= 1")

    async def _search(self, session: Session, problem: str) -> str:
        messages = plain_messages(problem)
        for wave_start in range(0, self.n, self.wave_size):
            calls = []
            for index in range(wave_start, min(wave_start + self.wave_size, self.n)):
                call = session.plan(f"s{index}", messages)
                if call is None:
                    break
                calls.append(call)
            results = await session.gather([session.run(call) for call in calls])
            if any(c.solved for c in results):
                return "solved"
            if session.exhausted:
                return "budget"
        return "done"


@dataclass(kw_only=True)
class SequentialRevision(_Method):
    """``num_threads`` proposals each revised for ``num_turns`` turns (the paper's Sequential-Revision+)."""

    name = "sequential-revision+"
    num_threads: int = 10
    num_turns: int = 80
    history_turns: int = 2
    num_retries: int = 0
    max_prompt_chars: int = 2000

    def __post_init__(self) -> None:
        if self.num_threads < 1 or self.num_turns < 1 or self.history_turns < 1:
            raise UserError("Sequential-Revision+ needs num_threads, num_turns and history_turns >= 1")

    async def _search(self, session: Session, problem: str) -> str:
        first = rcc_first_message(problem, [], marker=self.marker, max_chars=self.max_prompt_chars)
        histories: list[list[dict[str, str]]] = [[] for _ in range(self.num_threads)]
        last: list[Candidate | None] = [None] * self.num_threads
        for turn in range(self.num_turns):
            planned = []
            for thread in range(self.num_threads):
                previous = last[thread]
                if previous is None:
                    messages, parents = [first], []
                else:
                    histories[thread] += [
                        {"role": "assistant", "content": previous.text},
                        revision_message(
                            previous.as_parent(), marker=self.marker, max_chars=self.max_prompt_chars
                        ),
                    ]
                    keep = 2 * self.history_turns
                    messages, parents = [first, *histories[thread][-keep:]], [previous.id]
                call = session.plan(f"r{thread}-t{turn}", messages)
                if call is None:
                    break
                planned.append((thread, call, parents))
            results = await session.gather(
                [
                    session.run(call, parents=parents, conversation=thread, turn=turn)
                    for thread, call, parents in planned
                ]
            )
            for (thread, _, _), candidate in zip(planned, results, strict=True):
                last[thread] = candidate
            if any(c.solved for c in results):
                return "solved"
            if session.exhausted:
                return "budget"
        return "done"
