"""Demo part: Transformer² adapts the embedded model to an ARC question with an SVF expert.

The expert is the bundled ARC-Easy z-vector file (``testtime/svf/bundled/arc_easy.safetensors``, trained by
``experiments/svf/run.py`` with REINFORCE on ARC-Easy training questions) when it fits the model; for any
other model (the tests' tiny one) a small expert is trained on the spot with the same loop. The part shows
the two passes on one test question: the first pass (the model classifies the question among the known
experts, here one plus "other"), then the option probabilities before and after the expert is applied, and
the cloze accuracy of base and adapted model on a handful of ARC-Easy test questions.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import torch
import typer

from testtime.demo_base import DemoContext, DemoSection
from testtime.errors import UserError

__all__ = ["BUNDLED_EXPERT", "run"]

BUNDLED_EXPERT = Path(str(resources.files("testtime") / "svf" / "bundled" / "arc_easy.safetensors"))


def _expert_for(ctx: DemoContext, svf, policy, env, task):
    """The bundled expert when it fits the model, else one trained now (few steps)."""
    from testtime.svf.experts import expert_from_svf, load_expert
    from testtime.svf.reinforce import ReinforceConfig, train

    if BUNDLED_EXPERT.is_file():
        expert = load_expert(BUNDLED_EXPERT)
        try:
            expert.check_compatible(svf)
            return expert, "bundled (experiments/svf/run.py)"
        except UserError:
            pass
    steps = 2 if ctx.quick else 8
    instances = task.instances("train", seed=ctx.seed, n=8 if ctx.quick else 48)
    config = ReinforceConfig(
        lr=2e-3, batch_size=4 if ctx.quick else 8, num_samples=2, baseline="group", max_steps=steps,
        eval_every=steps, patience=0, val_fraction=0.0, seed=ctx.seed, max_grad_norm=1.0,
    )  # fmt: skip
    start = time.perf_counter()
    train(policy, env, instances, config)
    typer.echo(f"trained an ARC-Easy expert for {steps} steps in {time.perf_counter() - start:.0f} s")
    return expert_from_svf(
        svf, base_model=ctx.model_name or "model", task="arc-easy"
    ), f"trained now ({steps} steps)"


def run(ctx: DemoContext) -> DemoSection:
    """Classify a question, apply the expert, and show option probabilities and accuracy before and after."""
    from testtime.svf.adapt import classify_prompt
    from testtime.svf.reinforce import ClozeEnv, SVFPolicy
    from testtime.svf.svf import SVF, SVFConfig
    from testtime.tasks import get_task

    llm = ctx.llm()
    start = time.perf_counter()
    svf = SVF(llm.model, SVFConfig())
    typer.echo(
        f"SVF over {len(svf.names)} MLP matrices, {svf.num_trainable():,} parameters ({time.perf_counter() - start:.0f} s)"
    )
    policy = SVFPolicy(svf, llm.tokenizer, llm)
    task = get_task("arc-easy")
    env = ClozeEnv(task)
    expert, origin = _expert_for(ctx, svf, policy, env, task)
    svf.reset()
    svf.merge(llm)

    questions = task.instances("test", seed=ctx.seed, n=4 if ctx.quick else 24)
    shown = questions[0]
    first_pass = classify_prompt(llm, [task.prompt(shown)], [expert.task or "arc-easy"])[0]

    def option_probs() -> list[float]:
        encoded = [env._encode(policy, shown)]
        scores = env._engine_scores(policy, encoded)[0]
        return torch.softmax(scores, -1).tolist()

    base_probs = option_probs()
    base_accuracy = env.evaluate(policy, questions)
    expert.apply(svf)
    svf.merge(llm)
    adapted_probs = option_probs()
    adapted_accuracy = env.evaluate(policy, questions)
    svf.reset()
    svf.restore(llm)

    data = shown.data
    typer.echo(f"\nQ: {data['question']}")
    typer.echo(f"first pass: the model calls it {first_pass[0]!r} ({first_pass[1]}); expert: {origin}")
    rows = ["| option | base p | adapted p |", "|---|---|---|"]
    for label, text, p0, p1 in zip(data["labels"], data["choices"], base_probs, adapted_probs, strict=True):
        mark = " (key)" if label == data["answer"] else ""
        typer.echo(f"  ({label}) {text[:50]:50s} base {p0:.2f}  adapted {p1:.2f}{mark}")
        rows.append(f"| ({label}) {text}{mark} | {p0:.2f} | {p1:.2f} |")
    n = len(questions)
    typer.echo(
        f"ARC-Easy cloze on {n} test questions: base {base_accuracy:.0%}, adapted {adapted_accuracy:.0%}"
    )
    markdown = "\n".join(
        [
            f"Singular value fine-tuning adapts {len(svf.names)} MLP matrices through {svf.num_trainable():,} "
            f"numbers (one multiplier per singular value; LoRA r=16 on q and v would train 921,600 on this model). "
            f"Expert: {origin}.",
            "",
            f"**Question:** {data['question']}",
            "",
            f"First pass: asked what kind of question this is, the model answers **{first_pass[0]}** "
            f"({'in format' if first_pass[1] == 'prompt' else 'by the log-likelihood fallback'}). "
            "Second pass: the expert's z vectors are merged into the weights and the options are scored again.",
            "",
            *rows,
            "",
            f"Cloze accuracy on {n} ARC-Easy test questions: base {base_accuracy:.0%}, adapted "
            f"{adapted_accuracy:.0%} (small samples; see experiments/svf/README.md for intervals).",
        ]
    )
    return DemoSection(title="Transformer²: SVF experts and two-pass adaptation", markdown=markdown)
