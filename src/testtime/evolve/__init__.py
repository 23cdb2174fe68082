"""Mind Evolution (Lee et al., "Evolving Deeper LLM Thinking", arXiv 2501.09891) and its baselines.

Evolutionary search over whole LLM answers scored by a programmatic evaluator: islands of candidates,
Boltzmann parent selection, Refinement through Critical Conversation, migration, island resets (see
:mod:`testtime.evolve.mind_evolution`); 1-Pass, Best-of-N and Sequential-Revision+ at equal budget
(:mod:`testtime.evolve.baselines`); Table 2-style cost accounting and caps (:mod:`testtime.evolve.cost`);
resumable JSONL logs with lineage (:mod:`testtime.evolve.log`); the paper's two-stage search, a second model on
what the first left unsolved (:mod:`testtime.evolve.two_stage`). Any ``testtime.tasks`` task or a function
``answer -> (score, feedback, solved)`` is the evaluator. See docs/evolve.md.
"""

from __future__ import annotations

from typing import Any

from testtime.errors import UserError
from testtime.evolve.baselines import BestOfN, OnePass, SequentialRevision
from testtime.evolve.config import ABLATIONS, EvolveConfig
from testtime.evolve.core import Candidate, RunResult, evaluate_safely, task_evaluator
from testtime.evolve.cost import Budget, Cost, interval_union
from testtime.evolve.log import canonical, lineage, read_log, render_lineage
from testtime.evolve.mind_evolution import MindEvolution
from testtime.evolve.two_stage import TwoStage, TwoStageResult

__all__ = [
    "ABLATIONS",
    "METHODS",
    "BestOfN",
    "Budget",
    "Candidate",
    "Cost",
    "EvolveConfig",
    "MindEvolution",
    "OnePass",
    "RunResult",
    "SequentialRevision",
    "TwoStage",
    "TwoStageResult",
    "canonical",
    "evaluate_safely",
    "interval_union",
    "lineage",
    "make_method",
    "read_log",
    "render_lineage",
    "task_evaluator",
]

METHODS = ("mind-evolution", "best-of-n", "sequential-revision+", "one-pass")


def make_method(name: str, *, calls: int | None = None, config: EvolveConfig | None = None) -> Any:
    """A method by name, sized for a call budget.

    ``mind-evolution`` (optionally ``mind-evolution:ABLATION``, Table 4) uses ``config`` (default Table 1)
    and stops at the budget; ``best-of-n`` draws up to ``calls`` answers (800 without a budget, the paper's
    N); ``sequential-revision+`` runs 10 threads (fewer when ``calls`` < 10) of ``ceil(calls / threads)`` turns (the cap ends the last)
    (80 without a budget); ``one-pass`` makes one call.
    """
    base, _, ablation = name.partition(":")
    if base == "mind-evolution":
        cfg = config or EvolveConfig()
        return MindEvolution(cfg.ablation(ablation) if ablation else cfg)
    if ablation:
        raise UserError(f"ablations apply to mind-evolution only, got {name!r}")
    if base == "best-of-n":
        return BestOfN(n=calls or 800)
    if base in ("sequential-revision+", "sequential-revision"):
        threads = min(10, calls) if calls else 10
        return SequentialRevision(num_threads=threads, num_turns=-(-calls // threads) if calls else 80)
    if base == "one-pass":
        return OnePass()
    raise UserError(f"unknown method {name!r}; methods: {', '.join(METHODS)} (mind-evolution:ABLATION too)")
