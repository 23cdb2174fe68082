"""Accuracy of the base model and of the two-pass strategies on one task (used by ``testtime svf eval`` and the
experiments).

Strategies: ``fixed`` (the first expert for every question), ``prompt`` (A: the base model names each
question's category among the experts' tasks, with the likelihood fallback; "other" keeps the base model),
``classifier`` (B: the classification expert is applied for the first pass and the category read by
log-likelihood), ``few-shot`` (C: CEM over the experts' mixture on the first k instances, reported on the
other n − k, next to the base model on the same n − k).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from testtime.errors import UserError
from testtime.svf.adapt import CEMConfig, classify_by_likelihood, classify_prompt, few_shot_adapt
from testtime.svf.experts import Expert
from testtime.svf.reinforce import SVFPolicy, make_env
from testtime.svf.svf import SVF, SVFConfig

__all__ = ["evaluate_strategies", "svf_for_expert"]


def svf_for_expert(model: Any, expert: Expert, *, progress: bool = False) -> SVF:
    """An :class:`SVF` over ``model`` with the expert's targets, layers and parameterization."""
    config = SVFConfig(
        targets=tuple(expert.targets),
        layers=None if expert.layers is None else tuple(expert.layers),
        parameterization=expert.parameterization,  # type: ignore[arg-type]
        max_mult=expert.max_mult,
    )
    return SVF(model, config, progress=progress)


def _accuracy_by_label(
    policy: SVFPolicy, env: Any, instances: Sequence[Any], labels: Sequence[str], experts: dict[str, Expert]
) -> float:
    groups: dict[str, list[Any]] = defaultdict(list)
    for instance, label in zip(instances, labels, strict=True):
        groups[label].append(instance)
    solved = 0.0
    for label, group in groups.items():
        svf = policy.svf
        if label in experts:
            experts[label].apply(svf)
        else:
            svf.reset()
        solved += env.evaluate(policy, group) * len(group)
    policy.svf.reset()
    return solved / len(instances)


def evaluate_strategies(
    model: Any,
    tokenizer: Any,
    task: Any,
    instances: Sequence[Any],
    experts: Sequence[Expert],
    *,
    strategies: Sequence[str] = ("fixed",),
    classifier: Expert | None = None,
    env_mode: str = "auto",
    shots: int = 5,
    per_layer: bool = False,
    population: int = 8,
    generations: int = 5,
    max_new_tokens: int = 64,
    seed: int = 0,
    threads: int | None = None,
    policy: SVFPolicy | None = None,
) -> list[dict[str, Any]]:
    """Rows ``{"strategy", "accuracy", "n", "note"}``: the base model first, then each strategy."""
    if not experts:
        raise UserError("evaluation needs at least one expert")
    if policy is None:
        svf = svf_for_expert(model, experts[0])
        policy = SVFPolicy(svf, tokenizer, num_threads=threads)
    svf = policy.svf
    for expert in [*experts, *([classifier] if classifier else [])]:
        expert.check_compatible(svf)
    env = make_env(task, mode=env_mode, max_new_tokens=max_new_tokens)
    names = [e.task or f"expert{i}" for i, e in enumerate(experts)]
    by_name = dict(zip(names, experts, strict=True))
    questions = [task.prompt(i) for i in instances]
    svf.reset()
    rows = [
        {"strategy": "base", "accuracy": env.evaluate(policy, instances), "n": len(instances), "note": ""}
    ]
    for strategy in strategies:
        if strategy == "fixed":
            experts[0].apply(svf)
            accuracy = env.evaluate(policy, instances)
            svf.reset()
            rows.append(
                {"strategy": "fixed", "accuracy": accuracy, "n": len(instances), "note": f"expert {names[0]}"}
            )
        elif strategy == "prompt":
            svf.reset()
            svf.merge(policy.llm)
            picks = classify_prompt(policy.llm, questions, names)
            labels = [label for label, _ in picks]
            fallback = sum(how == "likelihood" for _, how in picks)
            accuracy = _accuracy_by_label(policy, env, instances, labels, by_name)
            counts = Counter(labels)
            note = f"picked {dict(counts)}; likelihood fallback {fallback}/{len(picks)}"
            rows.append(
                {
                    "strategy": "A prompt",
                    "accuracy": accuracy,
                    "n": len(instances),
                    "note": note,
                    "picks": dict(counts),
                }
            )
        elif strategy == "classifier":
            if classifier is None:
                raise UserError("the classifier strategy needs a classification expert")
            classifier.apply(svf)
            svf.merge(policy.llm)
            labels = [classify_by_likelihood(policy.llm, q, names) for q in questions]
            svf.reset()
            accuracy = _accuracy_by_label(policy, env, instances, labels, by_name)
            counts = Counter(labels)
            rows.append(
                {
                    "strategy": "B classifier",
                    "accuracy": accuracy,
                    "n": len(instances),
                    "note": f"picked {dict(counts)}",
                    "picks": dict(counts),
                }
            )
        elif strategy == "few-shot":
            if shots >= len(instances):
                raise UserError(f"few-shot needs more instances ({len(instances)}) than shots ({shots})")
            shot_items, rest = list(instances[:shots]), list(instances[shots:])
            config = CEMConfig(population=population, generations=generations, seed=seed)
            multipliers, result = few_shot_adapt(
                svf, experts, policy=policy, env=env, shots=shot_items, per_layer=per_layer, config=config
            )
            svf.reset()
            base_rest = env.evaluate(policy, rest)
            with svf.using_multipliers(multipliers):
                accuracy = env.evaluate(policy, rest)
            svf.reset()
            alphas = [round(float(a), 3) for a in result.best.view(len(experts), -1).mean(-1)]
            rows.append(
                {
                    "strategy": "C few-shot" + (" per-layer" if per_layer else ""),
                    "accuracy": accuracy,
                    "n": len(rest),
                    "note": f"k={shots}; base on the same {len(rest)}: {base_rest:.3f}; mean alpha {alphas}",
                    "base_same": base_rest,
                    "alphas": alphas,
                }
            )
        else:
            raise UserError(f"unknown strategy {strategy!r}")
        if strategy != "few-shot":
            svf.reset()
    svf.restore(policy.llm)
    return rows
