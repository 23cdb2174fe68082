"""Every method on the same instances at the same call budget: success rates with intervals, Table 2-style
costs, and success against budget (used by ``testtime evolve compare`` and experiments/evolve_mini.py).

Success against budget comes from one run per (method, instance, seed) at the largest budget: a run that
solved its instance after ``calls_to_solve`` calls counts as a success at every budget b >= calls_to_solve.
For Best-of-N that is exactly the run a cap of b would make; for the searches it is the same trajectory
stopped at b calls (a smaller cap does not change which calls come first).
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testtime.evolve.config import EvolveConfig
from testtime.evolve.core import RunResult, task_evaluator
from testtime.evolve.cost import Budget
from testtime.llm.protocol import BaseLLM, SamplingParams

__all__ = ["MethodSummary", "plot_success", "run_comparison", "summarize", "table", "wilson_interval"]


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95% by default); (0, 0) for no trials."""
    if total == 0:
        return 0.0, 0.0
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def run_comparison(
    llm: BaseLLM,
    task: Any,
    instances: Sequence[Any],
    methods: Sequence[str],
    *,
    seeds: Sequence[int],
    calls: int,
    params: SamplingParams,
    config: EvolveConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    price_input: float = 0.0,
    price_output: float = 0.0,
    on_run: Callable[[dict[str, Any]], None] | None = None,
    parallel_runs: int = 1,
) -> list[dict[str, Any]]:
    """Run each method on each instance with each seed at a cap of ``calls`` LLM calls.

    Each run logs to ``out_dir/logs/<method>/<instance>-s<seed>.jsonl`` (so an interrupted comparison
    resumes) and yields one row: method, instance, seed, solved, calls_to_solve, best score and costs.
    ``parallel_runs`` runs that many searches at once in one event loop (their calls share the local
    engine's batches or the server's); rows keep the (method, instance, seed) order either way.
    """
    import asyncio

    from testtime.evolve import make_method

    if parallel_runs < 1:
        raise ValueError("parallel_runs must be >= 1")
    jobs = [(m, inst, seed) for m in methods for inst in instances for seed in seeds]

    async def one(method: str, instance: Any, seed: int) -> dict[str, Any]:
        search = make_method(method, calls=calls, config=config)
        log_path = None
        if out_dir is not None:
            safe = method.replace(":", "_").replace("+", "plus")
            log_path = Path(out_dir) / "logs" / safe / f"{instance.id}-s{seed}.jsonl"
        result: RunResult = await search.arun(
            llm,
            task.prompt(instance),
            task_evaluator(task, instance),
            seed=seed,
            budget=Budget(max_calls=calls, price_input=price_input, price_output=price_output),
            params=params,
            log_path=None if log_path is None else str(log_path),
        )
        # the name asked for (``mind-evolution:no-critic``), not the search's class name
        row = {**result.summary(), "method": method, "instance": instance.id, "seed": seed}
        if on_run is not None:
            on_run(row)
        return row

    async def everything() -> list[dict[str, Any]]:
        gate = asyncio.Semaphore(parallel_runs)

        async def gated(job: tuple[str, Any, int]) -> dict[str, Any]:
            async with gate:
                return await one(*job)

        return list(await asyncio.gather(*(gated(job) for job in jobs)))

    return asyncio.run(everything())


@dataclass(kw_only=True)
class MethodSummary:
    """One line of the comparison table."""

    method: str
    runs: int
    solved: int
    low: float
    high: float
    seed_std: float
    calls: float
    input_tokens: float
    output_tokens: float
    wall_seconds: float
    price: float

    @property
    def rate(self) -> float:
        return self.solved / self.runs if self.runs else 0.0


def summarize(rows: Sequence[dict[str, Any]]) -> list[MethodSummary]:
    """Per method: success rate with its Wilson 95% interval over all (instance, seed) runs, the spread of
    the per-seed success rates, and the mean cost per run (the paper's Table 2 reports means per problem)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        solved = sum(bool(r["solved"]) for r in mine)
        low, high = wilson_interval(solved, len(mine))
        per_seed = {}
        for r in mine:
            per_seed.setdefault(r["seed"], []).append(bool(r["solved"]))
        rates = [sum(v) / len(v) for v in per_seed.values()]
        mean = sum(rates) / len(rates)
        std = math.sqrt(sum((x - mean) ** 2 for x in rates) / (len(rates) - 1)) if len(rates) > 1 else 0.0

        def avg(key: str, rows: list[dict[str, Any]] = mine) -> float:
            return sum(float(r[key]) for r in rows) / len(rows)

        out.append(
            MethodSummary(
                method=method,
                runs=len(mine),
                solved=solved,
                low=low,
                high=high,
                seed_std=std,
                calls=avg("calls"),
                input_tokens=avg("input_tokens"),
                output_tokens=avg("output_tokens"),
                wall_seconds=avg("wall_seconds"),
                price=avg("price"),
            )
        )
    return out


def table(summaries: Sequence[MethodSummary], *, prices: bool = False) -> str:
    """A markdown table like the paper's Table 2 (success rate, mean calls and tokens per problem)."""
    head = "| method | success | 95% interval | seed std | calls | input tokens | output tokens | wall s |"
    rule = "|---|---|---|---|---|---|---|---|"
    if prices:
        head, rule = head + " cost |", rule + "---|"
    lines = [head, rule]
    for s in summaries:
        line = (
            f"| {s.method} | {s.solved}/{s.runs} ({s.rate:.0%}) | {s.low:.0%}-{s.high:.0%} | {s.seed_std:.2f} | "
            f"{s.calls:.1f} | {s.input_tokens:,.0f} | {s.output_tokens:,.0f} | {s.wall_seconds:.1f} |"
        )
        lines.append(line + (f" {s.price:.4f} |" if prices else ""))
    return "\n".join(lines)


def success_curve(rows: Sequence[dict[str, Any]], method: str, budgets: Sequence[int]) -> list[float]:
    """Fraction of a method's runs solved within each budget (see the module docstring)."""
    mine = [r for r in rows if r["method"] == method]
    return [
        sum(r["calls_to_solve"] is not None and r["calls_to_solve"] <= b for r in mine) / max(len(mine), 1)
        for b in budgets
    ]


def plot_success(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, calls: int, title: str
) -> Path:
    """Success rate against the call budget, one line per method (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(range(1, calls + 1))
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for method in dict.fromkeys(r["method"] for r in rows):
        ax.step(budgets, success_curve(rows, method, budgets), where="post", label=method)
    ax.set_xlabel("LLM calls (budget)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_rows(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Rows as JSON lines."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
