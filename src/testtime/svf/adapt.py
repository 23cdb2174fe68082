"""Two-pass self-adaptation (Transformer² section 3.3): pick or mix SVF experts for a prompt, then answer.

The first pass looks at the prompt (or a few examples of the task) and decides the z vectors; the second
answers with them. Three strategies:

- **A, prompt-based** (:func:`classify_prompt`): the model itself is asked which category the question
  belongs to (the experts' names, or "other" for the base model). Small models often answer off-format;
  then the category with the highest mean log-likelihood as the answer to the same classification prompt is
  taken (log-likelihood fallback; a choice of this package, the paper's 8B models follow the format).
- **B, classification expert** (:func:`classification_task`): an SVF expert trained with the same
  REINFORCE loop to name the category of questions drawn from the *training* splits of the experts' tasks
  (the paper trains it on its experts' training data); at inference it is applied for the first pass and
  the category is read by log-likelihood over the names.
- **C, few-shot** (:func:`few_shot_adapt`): ``z' = Σ_k α_k z_k`` over the K experts (in multiplier space,
  see :mod:`testtime.svf.svf`; for raw z, whose scale nothing renormalises, relative to the base:
  ``z' = 1 + Σ_k α_k (z_k − 1)``, so that α ∈ [0, 1] spans base to expert), with one α per expert (per-vector) or one per expert and target matrix
  (``per_layer``; the official code's per-layer option is per weight matrix too). α is searched by the
  cross-entropy method (:func:`cem`) on k shots of the task: the score of an α is the accuracy on the shots,
  ties broken by the mean log-likelihood of the shots' reference answers (the official code breaks ties by
  the likelihood of the model's own correct answers). The result is reported on the other n − k instances.

CEM (official code's defaults in brackets): population 32 [32], elite ratio 0.2 [0.2] (at least one elite), α sampled from
``N(μ, σ)`` clipped to [0, 1] [0, 1], μ initialised to 1/K (the official code's default initial
coefficients), σ to half the range [same], the best member so far re-evaluated as member 0 [same], μ and σ
replaced by the elites' mean and standard deviation each generation [same, no smoothing by default]; 10
generations by default here against the official 50, for CPUs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from testtime.errors import UserError
from testtime.svf.experts import Expert
from testtime.svf.svf import SVF, combine_multipliers
from testtime.tasks.base import Instance, Verdict

__all__ = [
    "CEMConfig",
    "CEMResult",
    "ClassificationTask",
    "OTHER",
    "cem",
    "classification_prompt",
    "classification_task",
    "classify_by_likelihood",
    "classify_prompt",
    "few_shot_adapt",
    "mixture",
]

OTHER = "other"


# ---------------------------------------------------------------------------------------------- A: prompt


def classification_prompt(question: str, categories: Sequence[str]) -> str:
    """The first-pass question: which of ``categories`` (or "other") a question belongs to."""
    names = ", ".join(categories)
    return (
        "Which kind of problem is the following question? "
        f"Reply with one word from: {names}, {OTHER}.\n\n"
        f"Question: {question.strip()}\n\nKind:"
    )


def parse_category(text: str, categories: Sequence[str]) -> str | None:
    """The first category name (or "other") in ``text``, whole words, case-insensitive; None if none."""
    lowered = text.lower()
    best: tuple[int, str] | None = None
    for name in [*categories, OTHER]:
        match = re.search(rf"(?<![a-z0-9]){re.escape(name.lower())}(?![a-z0-9])", lowered)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), name)
    return None if best is None else best[1]


def _chat_text(llm: Any, prompt: str) -> str:
    tokenizer = llm.tokenizer
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    return prompt


def classify_by_likelihood(
    llm: Any, question: str, categories: Sequence[str], *, include_other: bool = False
) -> str:
    """The category whose name has the highest mean token log-probability as the classification answer."""
    names = [*categories, *([OTHER] if include_other else [])]
    context = _chat_text(llm, classification_prompt(question, categories))
    scores = llm.score_continuations(context, names)
    values = [s.logprob / max(s.num_tokens, 1) for s in scores]
    return names[max(range(len(names)), key=values.__getitem__)]


def classify_prompt(
    llm: Any, questions: Sequence[str], categories: Sequence[str], *, max_new_tokens: int = 8
) -> list[tuple[str, str]]:
    """Strategy A: the model names each question's category; log-likelihood when it answers off-format.

    Returns:
        Per question ``(category or "other", how)`` with ``how`` ``"prompt"`` or ``"likelihood"``.
    """
    if not categories:
        raise UserError("prompt-based adaptation needs at least one expert category")
    chats = [[{"role": "user", "content": classification_prompt(q, categories)}] for q in questions]
    outputs = llm.generate(chats, temperature=0, max_tokens=max_new_tokens) if chats else []
    out = []
    for question, choices in zip(questions, outputs, strict=True):
        parsed = parse_category(choices[0].text, categories)
        if parsed is not None:
            out.append((parsed, "prompt"))
        else:
            out.append((classify_by_likelihood(llm, question, categories), "likelihood"))
    return out


# ---------------------------------------------------------------------------------------------- B: classifier


class ClassificationTask:
    """Name the category of a question: a cloze task (options = category names) for the REINFORCE loop.

    Instances come from :func:`classification_task`; ``verify`` accepts "The answer is (X)." letters as the
    cloze environment writes them, or the category name itself.
    """

    name = "svf-classify"

    def __init__(self, categories: Sequence[str]) -> None:
        self.categories = list(categories)

    def cloze_prompt(self, instance: Instance) -> str:
        return classification_prompt(instance.data["question"], self.categories)

    def prompt(self, instance: Instance) -> str:
        return self.cloze_prompt(instance)

    def messages(self, instance: Instance) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt(instance)}]

    def verify(self, instance: Instance, answer: str) -> Verdict:
        labels, choices = instance.data["labels"], instance.data["choices"]
        match = re.search(r"\(([A-Z])\)", answer)
        picked = None
        if match and match.group(1) in labels:
            picked = choices[labels.index(match.group(1))]
        else:
            picked = parse_category(answer, self.categories)
        solved = picked == instance.data["category"]
        return Verdict(
            score=1.0 if solved else 0.0,
            solved=solved,
            feedback=f"the category is {instance.data['category']}",
        )


def classification_task(
    questions_by_category: Mapping[str, Sequence[str]],
) -> tuple[ClassificationTask, list[Instance]]:
    """The classification task and its instances from training-split questions of each expert's task.

    Args:
        questions_by_category: per category (expert name), prompts of its task's *training* instances.
    """
    categories = list(questions_by_category)
    if len(categories) < 2:
        raise UserError("a classification expert needs at least two categories")
    labels = [chr(ord("A") + i) for i in range(len(categories))]
    instances = []
    for category, questions in questions_by_category.items():
        for j, question in enumerate(questions):
            instances.append(
                Instance(
                    task="svf-classify",
                    id=f"{category}-{j}",
                    data={
                        "question": question,
                        "labels": labels,
                        "choices": categories,
                        "answer": labels[categories.index(category)],
                        "category": category,
                    },
                    reference=category,
                )
            )
    return ClassificationTask(categories), instances


# ---------------------------------------------------------------------------------------------- C: CEM


@dataclass(kw_only=True)
class CEMConfig:
    """Cross-entropy method settings (see the module docstring for the official values).

    Attributes:
        population: candidates per generation.
        elite_ratio: share of the population whose mean and spread become the next distribution.
        generations: iterations.
        low, high: the box the candidates are clipped to.
        init_mean: initial mean (None: the box's centre, or 1/K for expert mixtures).
        init_std: initial standard deviation (None: half the box's width).
        re_eval_best: keep the best candidate so far as member 0 of every generation.
        seed: the sampling seed.
    """

    population: int = 32
    elite_ratio: float = 0.2
    generations: int = 10
    low: float = 0.0
    high: float = 1.0
    init_mean: float | None = None
    init_std: float | None = None
    re_eval_best: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.population < 2:
            raise UserError("CEM population must be >= 2")
        if not 0 < self.elite_ratio <= 1:
            raise UserError("CEM elite_ratio must be in (0, 1]")
        if self.generations < 1:
            raise UserError("CEM generations must be >= 1")
        if not self.low < self.high:
            raise UserError("CEM needs low < high")


@dataclass(kw_only=True)
class CEMResult:
    """The best candidate and the search's trace.

    Attributes:
        best: ``[D]`` the best candidate found.
        best_score: its ``(performance, tie-break)``.
        history: per generation, the best and mean performance and the distribution's mean spread.
    """

    best: torch.Tensor
    best_score: tuple[float, float]
    history: list[dict[str, float]] = field(default_factory=list)


def cem(
    score: Callable[[torch.Tensor], tuple[float, float]], dim: int, config: CEMConfig | None = None
) -> CEMResult:
    """Maximise ``score`` over ``[low, high]^dim`` by the cross-entropy method.

    Args:
        score: candidate ``[dim]`` -> ``(performance, tie-break)``; compared lexicographically for the best,
            elites are ranked by performance (then tie-break).
        dim: the number of coefficients.
        config: CEM settings.
    """
    config = config or CEMConfig()
    generator = torch.Generator().manual_seed(config.seed)
    width = config.high - config.low
    mean = torch.full((dim,), config.init_mean if config.init_mean is not None else config.low + width / 2)
    std = torch.full((dim,), config.init_std if config.init_std is not None else width / 2)
    num_elites = max(1, int(config.elite_ratio * config.population))
    best = mean.clone()
    best_score: tuple[float, float] | None = None
    history = []
    for generation in range(config.generations):
        population = (torch.randn(config.population, dim, generator=generator) * std + mean).clamp(
            config.low, config.high
        )
        if config.re_eval_best and best_score is not None:
            population[0] = best
        scores = [score(candidate) for candidate in population]
        order = sorted(range(config.population), key=lambda i: scores[i], reverse=True)
        if best_score is None or scores[order[0]] > best_score:
            best, best_score = population[order[0]].clone(), scores[order[0]]
        elites = population[order[:num_elites]]
        mean = elites.mean(0)
        std = elites.std(0, unbiased=True) if num_elites > 1 else torch.zeros(dim)
        performances = [s[0] for s in scores]
        history.append(
            {
                "generation": generation,
                "best": float(best_score[0]),
                "mean": sum(performances) / len(performances),
                "std": float(std.mean()),
            }
        )
    assert best_score is not None
    return CEMResult(best=best, best_score=best_score, history=history)


def mixture(
    experts: Sequence[Expert], alphas: torch.Tensor, names: Sequence[str], *, relative: bool = False
) -> dict[str, torch.Tensor]:
    """Per target matrix, the mixed multiplier; ``alphas`` is ``[K]`` (per-vector) or ``[K, len(names)]``.

    ``relative=False``: ``m' = Σ_k α_k m_k`` (the official code, whose sigmoid form renormalises the scale
    away). ``relative=True`` (used for raw z, whose scale is not renormalised): ``m' = 1 + Σ_k α_k (m_k − 1)``,
    so α = 0 is the base model and α_k = 1 (others 0) is expert k.
    """
    multipliers = [e.multipliers() for e in experts]
    out = {}
    for j, name in enumerate(names):
        coefficients = alphas if alphas.dim() == 1 else alphas[:, j]
        if relative:
            deltas = [m[name] - 1 for m in multipliers]
            out[name] = 1 + combine_multipliers(deltas, coefficients)
        else:
            out[name] = combine_multipliers([m[name] for m in multipliers], coefficients)
    return out


def few_shot_adapt(
    svf: SVF,
    experts: Sequence[Expert],
    *,
    policy: Any,
    env: Any,
    shots: Sequence[Any],
    per_layer: bool = False,
    config: CEMConfig | None = None,
    tie_break: bool = True,
) -> tuple[dict[str, torch.Tensor], CEMResult]:
    """Strategy C: CEM over the mixture coefficients, scored on ``shots``.

    Args:
        svf: the SVF the experts belong to.
        experts: K experts (checked against ``svf``).
        policy: the :class:`~testtime.svf.reinforce.SVFPolicy` over ``svf``.
        env: the task's environment (``evaluate``, ``reference_rollouts``, ``ntp_logp``).
        shots: the k instances the coefficients are scored on.
        per_layer: one α per expert and target matrix (else one per expert).
        config: CEM settings (``init_mean`` defaults to 1/K).
        tie_break: break accuracy ties by the shots' reference log-likelihood.

    Returns:
        ``(multipliers, result)``: the mixture to apply with ``svf.using_multipliers`` and the search trace.
    """
    if not experts:
        raise UserError("few-shot adaptation needs at least one expert")
    for expert in experts:
        expert.check_compatible(svf)
    if not shots:
        raise UserError("few-shot adaptation needs at least one shot")
    num = len(experts)
    shape = (num, len(svf.names)) if per_layer else (num,)
    config = config or CEMConfig()
    if config.init_mean is None:
        config = CEMConfig(**{**config.__dict__, "init_mean": 1.0 / num})

    relative = svf.config.parameterization == "raw"

    def score(candidate: torch.Tensor) -> tuple[float, float]:
        alphas = candidate.view(shape)
        with svf.using_multipliers(mixture(experts, alphas, svf.names, relative=relative)):
            accuracy = env.evaluate(policy, shots)
            likelihood = _reference_likelihood(policy, env, shots) if tie_break else 0.0
        return accuracy, likelihood

    result = cem(score, int(torch.tensor(shape).prod()), config)
    return mixture(experts, result.best.view(shape), svf.names, relative=relative), result


@torch.no_grad()
def _reference_likelihood(policy: Any, env: Any, instances: Sequence[Any]) -> float:
    """Mean token log-likelihood of the instances' reference answers under the current policy."""
    references = env.reference_rollouts(policy, instances)
    rollouts = references[0] if isinstance(references, tuple) else references
    with policy.training() as model:
        return float(env.ntp_logp(model, rollouts).mean())
