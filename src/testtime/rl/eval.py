"""Evaluation on held-out splits: greedy pass@1, mean@k and pass@k, with Wilson intervals, and an audit file.

- **pass@1 (greedy)**: one temperature-0 completion per problem; the share solved.
- **mean@k**: k sampled completions per problem, the share solved (R1 reports pass@1 as this mean over
  k samples at temperature 0.6, top-p 0.95; arXiv 2501.12948, sec. 3).
- **pass@k**: the unbiased estimator ``1 - C(n - c, k) / C(n, k)`` from n samples with c correct (Chen et
  al. 2021, eq. 1), averaged over problems.

Intervals: Wilson score intervals at 95 %. For greedy pass@1 the trials are the problems; for mean@k and
pass@k the sampled runs are repeated for every seed and pooled: mean@k's trials are all (problem, seed,
sample) triples, pass@k's are (problem, seed) pairs with the estimator's expectation as the success count
(a normal-approximation reading; samples of a problem are not independent, so the interval is optimistic).
Per-seed values are reported too, so their spread can be read directly.

Every evaluated completion is written to ``completions.jsonl`` as ``{"task", "instance", "completion",
"reward", "mode", "seed"}`` (the instance as its ``to_dict()``): the input of ``testtime tasks audit``, which
prints rewarded completions for a person to read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testtime.llm.protocol import SamplingParams
from testtime.rl.rewards import answer_text
from testtime.rl.sft import prompt_for, write_jsonl
from testtime.tasks.base import Instance, Task

__all__ = ["EvalResult", "evaluate", "pass_at_k", "wilson_interval"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct (Chen et al. 2021): ``1 - C(n-c, k) / C(n, k)``."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def wilson_interval(successes: float, trials: float, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default); (0, 1) with no trials."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(kw_only=True)
class EvalResult:
    """Accuracy figures with 95 % Wilson intervals (see the module docstring)."""

    task: str
    problems: int
    pass1_greedy: float
    pass1_greedy_ci: tuple[float, float]
    k: int
    mean_at_k: float | None = None
    mean_at_k_ci: tuple[float, float] | None = None
    pass_at_k: float | None = None
    pass_at_k_ci: tuple[float, float] | None = None
    per_seed_mean_at_k: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate(
    llm: Any,
    task: Task,
    instances: Sequence[Instance],
    *,
    k: int = 4,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_tokens: int = 256,
    seeds: Sequence[int] = (0,),
    template: str = "chat",
    use_answer_block: bool = True,
    out: str | Path | None = None,
) -> EvalResult:
    """Greedy pass@1, and with ``k > 0`` mean@k and pass@k over ``seeds``, on ``instances``.

    Args:
        llm: any LLM backend.
        task: the verifier.
        instances: held-out problems (use the ``test`` split; never ``train``).
        k: samples per problem (0: greedy only).
        temperature, top_p, max_tokens: sampling of the k samples (R1: 0.6, 0.95).
        seeds: one sampled run per seed.
        template: prompt template (see :func:`testtime.rl.sft.prompt_for`).
        use_answer_block: verify the ``<answer>`` block's content when there is one.
        out: a folder for ``completions.jsonl``.
    """
    if not instances:
        raise ValueError("no problems to evaluate")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if not seeds:
        raise ValueError("need at least one seed")
    prompts = [prompt_for(task, i, template) for i in instances]
    records: list[dict[str, Any]] = []

    def solved(instance: Instance, text: str) -> bool:
        return task.verify(instance, answer_text(text) if use_answer_block else text).solved

    greedy = llm.generate(prompts, SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens))
    greedy_hits = 0
    for instance, choices in zip(instances, greedy, strict=True):
        ok = solved(instance, choices[0].text)
        greedy_hits += ok
        records.append(
            {
                "task": task.name,
                "instance": instance.to_dict(),
                "completion": choices[0].text,
                "reward": float(ok),
                "mode": "greedy",
                "seed": None,
            }
        )
    result = EvalResult(
        task=task.name,
        problems=len(instances),
        pass1_greedy=greedy_hits / len(instances),
        pass1_greedy_ci=wilson_interval(greedy_hits, len(instances)),
        k=k,
        seeds=list(seeds),
    )
    if k > 0:
        sample_hits, sample_trials, passk_sum, passk_trials = 0, 0, 0.0, 0
        for seed in seeds:
            sampled = llm.generate(
                prompts,
                SamplingParams(n=k, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed),
            )
            seed_hits = 0
            for instance, choices in zip(instances, sampled, strict=True):
                hits = 0
                for choice in choices:
                    ok = solved(instance, choice.text)
                    hits += ok
                    records.append(
                        {
                            "task": task.name,
                            "instance": instance.to_dict(),
                            "completion": choice.text,
                            "reward": float(ok),
                            "mode": "sample",
                            "seed": seed,
                        }
                    )
                seed_hits += hits
                passk_sum += pass_at_k(k, hits, k)
                passk_trials += 1
            sample_hits += seed_hits
            sample_trials += k * len(instances)
            result.per_seed_mean_at_k.append(seed_hits / (k * len(instances)))
        result.mean_at_k = sample_hits / sample_trials
        result.mean_at_k_ci = wilson_interval(sample_hits, sample_trials)
        result.pass_at_k = passk_sum / passk_trials
        result.pass_at_k_ci = wilson_interval(passk_sum, passk_trials)
    if out is not None:
        write_jsonl(Path(out) / "completions.jsonl", records)
    return result
