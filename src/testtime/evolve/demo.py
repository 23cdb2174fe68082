"""Demo part: a small Mind Evolution search on the embedded model, with the best candidate and its lineage.

A 135M model rarely solves these problems; the part shows the machinery at work: islands of candidates,
conversations that refine on the verifier's feedback, and the ancestry of the best answer replayed from the
run's log. The search is the ``tiny`` preset (2 generations x 2 islands x 2 conversations x 2 turns, with a
reset) cut at a budget of 12 calls of 96 tokens (about 1-2 minutes on 2 idle cores); ``ctx.quick`` cuts it
to 4 calls of 16 tokens.
"""

from __future__ import annotations

import time

import typer

from testtime.demo_base import DemoContext, DemoSection
from testtime.evolve.config import EvolveConfig
from testtime.evolve.core import task_evaluator
from testtime.evolve.cost import Budget
from testtime.evolve.log import read_log, render_lineage
from testtime.evolve.mind_evolution import MindEvolution
from testtime.llm.protocol import SamplingParams
from testtime.tasks import get_task

TASK, KNOBS = "countdown", {"num_numbers": 3, "max_number": 20}


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def run(ctx: DemoContext) -> DemoSection:
    """Evolve answers to one Countdown instance and report the best candidate with its lineage."""
    calls, max_tokens = (4, 16) if ctx.quick else (12, 96)
    task = get_task(TASK)
    instance = task.instances(seed=ctx.seed, n=1, **KNOBS)[0]
    log_path = ctx.out_dir / "evolve_log.jsonl"
    if log_path.exists():
        log_path.unlink()
    llm = ctx.llm()
    typer.echo(f"Mind Evolution on {TASK} {instance.id}: {task.prompt(instance)[:120]}...")
    start = time.perf_counter()
    result = MindEvolution(EvolveConfig.tiny()).run(
        llm,
        task.prompt(instance),
        task_evaluator(task, instance),
        seed=ctx.seed,
        budget=Budget(max_calls=calls),
        params=SamplingParams(temperature=0.8, max_tokens=max_tokens),
        log_path=str(log_path),
        on_candidate=lambda c: typer.echo(
            f"  {c.id}: score {c.score:.2f}{' SOLVED' if c.solved else ''}"
            if c.kind == "candidate"
            else f"  {c.id}: the LLM chose elites for the island reset"
        ),
    )
    seconds = time.perf_counter() - start
    cost = result.cost
    typer.echo(
        f"{len(result.candidates)} candidates, {cost.calls} calls, {cost.input_tokens} input and "
        f"{cost.output_tokens} output tokens, {cost.wall_seconds:.1f} s of calls ({seconds:.1f} s in all); "
        f"stopped: {result.stopped}"
    )
    best = result.best
    assert best is not None, "a budget of at least one call gives a candidate"
    tree = render_lineage(read_log(log_path), best.id, width=80)
    typer.echo(
        f"best {best.id}: score {best.score:.2f}, solved {best.solved}\n  answer: {_cell(best.answer, 200)}"
    )
    typer.echo(f"  feedback: {_cell(best.feedback, 200)}\nlineage:\n{tree}")
    rows = [
        "| candidate | island | generation | turn | score | answer (start) | feedback |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in result.candidates:
        rows.append(
            f"| {c.id} | {c.island} | {c.generation} | {c.turn} | {c.score:.2f} | {_cell(c.answer, 80)} | "
            f"{_cell(c.feedback, 80)} |"
        )
    markdown = "\n".join(
        [
            f"Mind Evolution (the `tiny` preset, budget {calls} calls, {max_tokens} tokens per answer) searched "
            f"for a solution of Countdown instance `{instance.id}` with the embedded model: "
            f"{'solved' if result.solved else 'not solved'} after {cost.calls} calls, {cost.input_tokens:,} "
            f"input and {cost.output_tokens:,} output tokens, {cost.wall_seconds:.1f} s of calls "
            "(concurrent calls counted once).",
            "",
            f"Best candidate `{best.id}` (score {best.score:.2f}): `{_cell(best.answer, 200)}`; the verifier "
            f"says: {_cell(best.feedback, 200)}",
            "",
            "Its lineage replayed from the run log (each line a candidate, indented lines its parents):",
            "",
            "```",
            tree,
            "```",
            "",
            *rows,
        ]
    )
    return DemoSection(title="Mind Evolution", markdown=markdown, figures=[])
