"""The paper's two-stage search (Lee et al., arXiv 2501.09891, §4 "Models"; the "(+pro)" rows of Tables 2
and 6): Mind Evolution with a first model and Table 1's settings; a problem it leaves unsolved is searched
again, from scratch, by Mind Evolution with a second model and its own settings (the paper: Gemini 1.5 Flash,
then Gemini 1.5 Pro with :meth:`EvolveConfig.gemini_pro`). The paper reports the second stage's costs
averaged over the problems it ran on only; :class:`TwoStageResult` keeps each stage's cost apart.

Each stage is an ordinary :class:`MindEvolution` run with its own log (``<log>.stage1.jsonl`` and
``<log>.stage2.jsonl``), budget and prices, so a killed two-stage run resumes like a single one: a finished
first stage is read back from its log without asking its model again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from testtime.evolve.config import EvolveConfig
from testtime.evolve.core import Candidate, Evaluator, RunResult
from testtime.evolve.cost import Budget, Cost
from testtime.evolve.mind_evolution import MindEvolution
from testtime.llm.protocol import BaseLLM, SamplingParams

__all__ = ["TwoStage", "TwoStageResult", "stage_log_paths"]


def stage_log_paths(log_path: str | os.PathLike[str]) -> tuple[str, str]:
    """The two stages' logs next to ``log_path``: ``run.jsonl`` -> ``run.stage1.jsonl``, ``run.stage2.jsonl``."""
    root, ext = os.path.splitext(os.fspath(log_path))
    ext = ext or ".jsonl"
    return f"{root}.stage1{ext}", f"{root}.stage2{ext}"


@dataclass(kw_only=True)
class TwoStageResult:
    """The outcome of a two-stage run.

    Attributes:
        first: the first stage's run.
        second: the second stage's run; None when the first stage solved the problem.
    """

    first: RunResult
    second: RunResult | None

    @property
    def solved(self) -> bool:
        return self.first.solved or (self.second is not None and self.second.solved)

    @property
    def best(self) -> Candidate | None:
        """The solving candidate, else the better best of the two stages (the first on ties)."""
        bests = [r.best for r in (self.first, self.second) if r is not None and r.best is not None]
        solved = [c for c in bests if c.solved]
        return solved[0] if solved else max(bests, key=lambda c: c.score, default=None)

    @property
    def cost(self) -> Cost:
        """Both stages together (wall times added: the stages run one after the other)."""
        total = Cost()
        for run in (self.first, self.second):
            if run is None:
                continue
            for name, value in run.cost.as_dict().items():
                setattr(total, name, getattr(total, name) + value)
        return total

    def summary(self) -> dict[str, Any]:
        best = self.best
        second = None if self.second is None else self.second.summary()
        return {
            "method": "two-stage",
            "solved": self.solved,
            "solved_in_stage": 1 if self.first.solved else (2 if self.solved else None),
            "best_score": None if best is None else best.score,
            **self.cost.as_dict(),
            "first": self.first.summary(),
            "second": second,
        }


class TwoStage:
    """Mind Evolution with a first model, then with a second model on what the first left unsolved.

    Example::

        from testtime.evolve import EvolveConfig, TwoStage
        result = TwoStage(EvolveConfig.paper(), EvolveConfig.gemini_pro()).run(
            flash, problem, evaluator, second_llm=pro, seed=0, log_path="runs/p0.jsonl")
        result.solved, result.first.cost, result.second and result.second.cost
    """

    name = "two-stage"

    def __init__(self, first: EvolveConfig | None = None, second: EvolveConfig | None = None) -> None:
        self.first = MindEvolution(first or EvolveConfig.paper())
        self.second = MindEvolution(second or EvolveConfig.gemini_pro())

    def run(self, llm: BaseLLM, problem: str, evaluator: Evaluator, **kwargs: Any) -> TwoStageResult:
        """Synchronous :meth:`arun`."""
        import asyncio

        return asyncio.run(self.arun(llm, problem, evaluator, **kwargs))

    async def arun(
        self,
        llm: BaseLLM,
        problem: str,
        evaluator: Evaluator,
        *,
        second_llm: BaseLLM | None = None,
        seed: int = 0,
        budget: Budget | None = None,
        second_budget: Budget | None = None,
        params: SamplingParams | None = None,
        second_params: SamplingParams | None = None,
        log_path: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> TwoStageResult:
        """Search ``problem`` with ``llm``; if unsolved, search it again with ``second_llm``.

        Args:
            llm: the first stage's backend (the paper: Gemini 1.5 Flash).
            problem: the problem text.
            evaluator: ``answer -> (score, feedback, solved)`` or a Verdict, for both stages.
            second_llm: the second stage's backend (the paper: Gemini 1.5 Pro); default ``llm``.
            seed: both stages' seed.
            budget: the first stage's caps and prices.
            second_budget: the second stage's caps and prices (each model has its own price per token).
            params: the first stage's sampling parameters.
            second_params: the second stage's (default ``params``).
            log_path: the two logs are written beside it (:func:`stage_log_paths`).
            **kwargs: passed to both stages' :meth:`MindEvolution.arun` (``on_candidate``, ``concurrent``).
        """
        paths: tuple[str | None, str | None] = (None, None)
        if log_path is not None:
            paths = stage_log_paths(log_path)
        first = await self.first.arun(
            llm, problem, evaluator, seed=seed, budget=budget, params=params, log_path=paths[0], **kwargs
        )
        if first.solved:
            return TwoStageResult(first=first, second=None)
        second = await self.second.arun(
            second_llm or llm,
            problem,
            evaluator,
            seed=seed,
            budget=second_budget,
            params=second_params or params,
            log_path=paths[1],
            **kwargs,
        )
        return TwoStageResult(first=first, second=second)
