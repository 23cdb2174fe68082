"""Mind Evolution (Lee et al., "Evolving Deeper LLM Thinking", arXiv 2501.09891, §3): a genetic search in
which an LLM generates, recombines and refines whole candidate answers scored by a programmatic evaluator.

One run (Algorithm in §3, settings :class:`~testtime.evolve.config.EvolveConfig`, Table 1):

- for each generation g = 1..N_gens, for each island i = 1..N_island **in order**:

  - N_convs conversations are planned; each starts from parents drawn from the island's population by
    Boltzmann selection, :func:`boltzmann_probabilities` (softmax of fitness over a temperature), with
    zero parents with probability Pr_no_parents, else 1..N_parent (option ``parent_count``); in the first
    generation islands start parent-free (option ``island_start``);
  - each conversation runs N_seq turns of Refinement through Critical Conversation (RCC, §3.2): a critic
    analyses the parents or the last proposal with the evaluator's feedback, an author proposes a
    refined solution (:mod:`testtime.evolve.prompts`); every proposal is a candidate, scored and added to
    the island;
  - migration (§3.2): the island's top N_emigrate candidates are copied into island i + 1 (the last island's
    into the first, for the next generation), *before* island i + 1 evolves;

- every N_reset_interval generations the N_reset islands with the lowest mean score are reset (§3.2): their
  population is replaced by N_top elites chosen by the LLM, for quality and diversity, among the global top
  N_candidate (option ``llm_reset``; else the plain top N_top);
- the run stops at the first solved candidate (``early_stop``), when the budget is spent, or after N_gens.

Concurrency keeps these semantics: islands still evolve one after another (island i + 1 sees island i's
migrants), and within an island the N_convs conversations advance turn by turn together, each turn's calls
issued concurrently (``asyncio.gather``; the local engine batches them, an HTTP backend sends them in
parallel). Random choices come from a ``random.Random`` seeded by (seed, generation, island) and are all
drawn before the island's calls are issued, so a run is deterministic under a seed with a deterministic LLM
whatever order the calls finish in. Early stop is checked after each turn: the other conversations' calls
of that turn were already issued and are kept (a deterministic rule; a sequential implementation would stop
one call earlier).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from testtime.evolve.config import EvolveConfig
from testtime.evolve.core import Candidate, Evaluator, RunResult, Session
from testtime.evolve.cost import Budget
from testtime.evolve.log import RunLog
from testtime.evolve.prompts import (
    parse_selection,
    rcc_first_message,
    rcc_followup_message,
    reset_selection_messages,
)
from testtime.llm.protocol import BaseLLM, Message, SamplingParams

__all__ = [
    "DEFAULT_PARAMS",
    "MindEvolution",
    "boltzmann_probabilities",
    "boltzmann_sample",
    "island_means",
    "lowest_islands",
    "top_candidates",
]

DEFAULT_PARAMS = SamplingParams(temperature=1.0, max_tokens=512)


# -- pure pieces -----------------------------------------------------------------------------------------------
def boltzmann_probabilities(scores: Sequence[float], temperature: float) -> list[float]:
    """Boltzmann (softmax) selection probabilities, P(i) = exp(s_i / T) / sum_j exp(s_j / T) (§3.2).

    Args:
        scores: fitness of each candidate, shape (n,).
        temperature: T > 0; small T favours the fittest, large T approaches uniform.

    Returns:
        Probabilities, shape (n,), summing to 1.
    """
    assert temperature > 0 and len(scores) > 0
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]
    total = sum(weights)
    return [w / total for w in weights]


def boltzmann_sample(scores: Sequence[float], k: int, temperature: float, rng: random.Random) -> list[int]:
    """Draw ``k`` distinct indices: each draw is Boltzmann over the indices not yet drawn (so the first draw
    follows :func:`boltzmann_probabilities` exactly)."""
    remaining = list(range(len(scores)))
    chosen: list[int] = []
    for _ in range(min(k, len(scores))):
        probs = boltzmann_probabilities([scores[i] for i in remaining], temperature)
        u, acc, pick = rng.random(), 0.0, len(remaining) - 1
        for position, p in enumerate(probs):
            acc += p
            if u < acc:
                pick = position
                break
        chosen.append(remaining.pop(pick))
    return chosen


def top_candidates(population: Sequence[Candidate], k: int) -> list[Candidate]:
    """The ``k`` best distinct candidates: by score, then earlier ``seq``."""
    unique = {c.id: c for c in population}
    return sorted(unique.values(), key=lambda c: (-c.score, c.seq))[:k]


def island_means(islands: Sequence[Sequence[Candidate]]) -> list[float]:
    """Mean score of each island's population (0 for an empty island)."""
    return [sum(c.score for c in pop) / len(pop) if pop else 0.0 for pop in islands]


def lowest_islands(means: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` islands with the lowest mean score (ties: the lower index)."""
    return sorted(range(len(means)), key=lambda i: (means[i], i))[:k]


# -- the search ------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class _Conversation:
    index: int
    parents: list[Candidate]
    messages: list[Message] = field(default_factory=list)
    last: Candidate | None = None


class MindEvolution:
    """Mind Evolution with a config (default: Table 1).

    Example::

        from testtime.evolve import MindEvolution, EvolveConfig
        result = MindEvolution(EvolveConfig.tiny()).run(llm, problem, evaluator, seed=0)
        result.best.answer, result.solved, result.cost
    """

    name = "mind-evolution"

    def __init__(self, config: EvolveConfig | None = None) -> None:
        self.config = config or EvolveConfig()

    def header(self, problem: str, seed: int, params: SamplingParams) -> dict[str, Any]:
        return {
            "method": self.name,
            "settings": self.config.to_dict(),
            "seed": seed,
            "problem": problem,
            "sampling": _params_dict(params),
        }

    def run(self, llm: BaseLLM, problem: str, evaluator: Evaluator, **kwargs: Any) -> RunResult:
        """Synchronous :meth:`arun`."""
        import asyncio

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
        """Search for a solution of ``problem``.

        Args:
            llm: the backend.
            problem: the problem text (e.g. ``task.prompt(instance)``).
            evaluator: ``answer -> (score, feedback, solved)`` or a Verdict.
            seed: the run's seed.
            budget: caps (calls, tokens) and prices.
            params: sampling parameters (default: temperature 1, 512 tokens).
            log_path: the JSONL log; an existing log of the same run is resumed.
            on_candidate: called with each new candidate.
            concurrent: issue each turn's calls concurrently (False: one by one; same results).

        Returns:
            The :class:`RunResult`.
        """
        cfg = self.config
        params = params or DEFAULT_PARAMS
        log = RunLog(log_path, self.header(problem, seed, params))
        session = Session(
            llm,
            evaluator,
            params=params,
            budget=budget,
            log=log,
            seed=seed,
            marker=cfg.answer_marker,
            max_answer_chars=cfg.max_answer_chars,
            num_retries=cfg.num_retries,
            on_candidate=on_candidate,
            concurrent=concurrent,
        )
        islands: list[list[Candidate]] = [[] for _ in range(cfg.num_islands)]
        stopped = "done"
        for generation in range(1, cfg.num_generations + 1):
            for island in range(cfg.num_islands):
                stopped = await self._evolve_island(session, problem, islands, generation, island)
                if stopped != "done":
                    return session.result(self.name, stopped)
                if cfg.migration and cfg.num_islands > 1:
                    migrate(islands, island, cfg.num_emigrate)
            if (
                cfg.num_reset > 0
                and cfg.num_islands > 1
                and generation % cfg.reset_interval == 0
                and generation < cfg.num_generations
            ):
                await self._reset(session, problem, islands, generation)
        return session.result(self.name, stopped)

    def _plan_parents(
        self, population: list[Candidate], generation: int, island: int, seed: int
    ) -> list[list[Candidate]]:
        cfg = self.config
        rng = random.Random(f"{seed}|mind-evolution|g{generation}|i{island}")
        fresh = generation == 1 and (cfg.island_start == "fresh" or island == 0)
        plans = []
        for _ in range(cfg.num_conversations):
            if fresh or not population:
                plans.append([])
                continue
            if rng.random() < cfg.prob_no_parents:
                count = 0
            elif cfg.parent_count == "max":
                count = cfg.num_parents
            else:
                count = rng.randint(1, max(cfg.num_parents, 1)) if cfg.num_parents > 0 else 0
            picks = boltzmann_sample([c.score for c in population], count, cfg.selection_temperature, rng)
            plans.append([population[i] for i in picks])
        return plans

    async def _evolve_island(
        self, session: Session, problem: str, islands: list[list[Candidate]], generation: int, island: int
    ) -> str:

        cfg = self.config
        population = islands[island]
        unique = list({c.id: c for c in population}.values())
        conversations = [
            _Conversation(index=c, parents=parents)
            for c, parents in enumerate(self._plan_parents(unique, generation, island, session.seed))
        ]
        prompt_options = dict(
            critic=cfg.critic,
            textual_feedback=cfg.textual_feedback,
            strategy_questions=cfg.strategy_questions,
            marker=cfg.answer_marker,
            max_chars=cfg.max_prompt_chars,
        )
        for turn in range(cfg.num_turns):
            planned = []
            for conv in conversations:
                if turn == 0:
                    parents = [p.as_parent() for p in conv.parents]
                    messages = [rcc_first_message(problem, parents, **prompt_options)]
                    parent_ids = [p.id for p in conv.parents]
                else:
                    assert conv.last is not None
                    messages = [
                        *conv.messages,
                        {"role": "assistant", "content": conv.last.text},
                        rcc_followup_message(conv.last.as_parent(), **prompt_options),
                    ]
                    parent_ids = [conv.last.id]
                call = session.plan(f"g{generation}-i{island}-c{conv.index}-t{turn}", messages)
                if call is None:
                    break
                planned.append((conv, call, parent_ids))
            results = await session.gather(
                [
                    session.run(
                        call,
                        parents=parent_ids,
                        island=island,
                        generation=generation,
                        conversation=conv.index,
                        turn=turn,
                    )
                    for conv, call, parent_ids in planned
                ]
            )
            for (conv, call, _), candidate in zip(planned, results, strict=True):
                conv.messages = call.messages
                conv.last = candidate
                if cfg.deduplicate and any(c.answer == candidate.answer for c in population):
                    continue
                population.append(candidate)
            if cfg.early_stop and any(c.solved for c in results):
                return "solved"
            if session.exhausted:
                return "budget"
        return "done"

    async def _reset(
        self, session: Session, problem: str, islands: list[list[Candidate]], generation: int
    ) -> None:
        cfg = self.config
        targets = lowest_islands(island_means(islands), cfg.num_reset)
        pool = top_candidates([c for pop in islands for c in pop], cfg.num_candidates)
        elites = pool[: cfg.num_top]
        if cfg.llm_reset and len(pool) > cfg.num_top:
            messages = reset_selection_messages(
                problem, [c.as_parent() for c in pool], cfg.num_top, max_chars=cfg.max_prompt_chars
            )
            call = session.plan(f"g{generation}-reset", messages)
            if call is not None:
                record = await session.run(
                    call, kind="select", generation=generation, parents=[c.id for c in pool]
                )
                chosen = parse_selection(record.text, len(pool), cfg.num_top)
                for index in range(len(pool)):  # fill up by score when the LLM named too few
                    if len(chosen) >= cfg.num_top:
                        break
                    if index not in chosen:
                        chosen.append(index)
                elites = [pool[i] for i in chosen]
        for island in targets:
            islands[island][:] = list(elites)


def migrate(islands: list[list[Candidate]], source: int, count: int) -> list[Candidate]:
    """Copy the ``count`` best candidates of island ``source`` into the next island (cyclically), skipping
    those already there; returns the migrants (§3.2)."""
    target = (source + 1) % len(islands)
    present = {c.id for c in islands[target]}
    migrants = [c for c in top_candidates(islands[source], count) if c.id not in present]
    islands[target].extend(migrants)
    return migrants


def _params_dict(params: SamplingParams) -> dict[str, Any]:
    return {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "stop": list(params.stop),
    }
