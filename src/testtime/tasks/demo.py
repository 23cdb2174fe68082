"""Demo part: the embedded model tries a few verifiable tasks; the verifiers say what is wrong.

A 135M-parameter model mostly fails these tasks; that is expected and the point is the verifier's
feedback (what Mind Evolution refines on) and its score (what GRPO rewards). The part also measures ARC-Easy
accuracy two ways, answering with a letter (near chance for this model) and by cloze scoring of the options'
texts (clearly above chance), and plots both against chance.
"""

from __future__ import annotations

import time

import typer

from testtime.demo_base import DemoContext, DemoSection
from testtime.tasks.arc import ArcTask, cloze_predict
from testtime.tasks.base import Task, get_task

# (task, difficulty knobs) shown with one generated answer each.
SHOWCASE = (
    ("countdown", {"num_numbers": 3, "max_number": 20}),
    ("arithmetic", {"digits": 2, "terms": 2}),
    ("calendar-scheduling", {"num_people": 2}),
    ("stegpoet", {"length": 4, "vocab": 4}),
    ("gsm8k", {}),
)


def _answer_all(ctx: DemoContext, prompts: list[str], max_tokens: int) -> list[str]:
    """Greedy answers to ``prompts`` in one engine batch (the demo's shared local backend)."""
    chats = [[{"role": "user", "content": prompt}] for prompt in prompts]
    out = ctx.llm().generate(chats, temperature=0, max_tokens=max_tokens)
    return [choices[0].text.strip() for choices in out]


def _cell(text: str, limit: int = 160, *, markdown: bool = True) -> str:
    """One line, at most ``limit`` characters; escaped for a markdown table cell when ``markdown``."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if markdown:
        text = text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return text


def run(ctx: DemoContext) -> DemoSection:
    """Show a few tasks answered by the model with the verifier's verdicts, then ARC-Easy letters vs cloze."""
    showcase = SHOWCASE[:1] if ctx.quick else SHOWCASE
    max_new_tokens = 32 if ctx.quick else 128
    rows = []
    tasks: list[Task] = [get_task(name) for name, _ in showcase]
    instances = [
        task.instances(seed=ctx.seed, n=1, **knobs)[0]
        for task, (_, knobs) in zip(tasks, showcase, strict=True)
    ]
    start = time.perf_counter()
    answers = _answer_all(
        ctx, [task.prompt(i) for task, i in zip(tasks, instances, strict=True)], max_new_tokens
    )
    typer.echo(f"{len(answers)} answers in one batch in {time.perf_counter() - start:.1f} s")
    for (name, _), task, instance, answer in zip(showcase, tasks, instances, answers, strict=True):
        verdict = task.verify(instance, answer)
        typer.echo(f"\n[{name}] {instance.id}: score {verdict.score:.2f}, solved {verdict.solved}")
        typer.echo(f"  answer:   {_cell(answer, 200, markdown=False)}")
        typer.echo(f"  feedback: {_cell(verdict.feedback, 200, markdown=False)}")
        rows.append((name, answer, verdict))

    # ARC-Easy: letters by generation vs cloze scoring of the option texts.
    arc: ArcTask = get_task("arc-easy")  # type: ignore[assignment]
    count = 4 if ctx.quick else 30
    questions = arc.instances("test", seed=ctx.seed, n=count)
    scorer = ctx.llm()  # the engine scores the four options of a question in one batch
    start = time.perf_counter()
    letter_answers = _answer_all(ctx, [arc.prompt(q) for q in questions], 12)
    letters = sum(arc.verify(q, a).solved for q, a in zip(questions, letter_answers, strict=True))
    letter_seconds = time.perf_counter() - start
    start = time.perf_counter()
    cloze = sum(arc.verify(q, f"The answer is ({cloze_predict(arc, q, scorer)}).").solved for q in questions)
    cloze_seconds = time.perf_counter() - start
    chance = sum(1 / len(q.data["labels"]) for q in questions) / count
    typer.echo(
        f"\nARC-Easy, {count} test questions: letters {letters}/{count} ({letter_seconds:.0f} s), "
        f"cloze {cloze}/{count} ({cloze_seconds:.0f} s), chance {chance:.0%}"
    )

    figure = ctx.out_dir / "tasks_arc_easy.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(
        ["letter (generation)", "cloze (log-prob)"], [letters / count, cloze / count], color=["#999", "#3a7"]
    )
    ax.axhline(chance, color="k", linestyle="--", linewidth=1, label=f"chance {chance:.0%}")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"ARC-Easy, {count} test questions")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(figure, dpi=120)
    plt.close(fig)

    table = ["| task | model answer (start) | score | solved | verifier feedback |", "|---|---|---|---|---|"]
    for name, answer, verdict in rows:
        table.append(
            f"| {name} | {_cell(answer, 120)} | {verdict.score:.2f} | {verdict.solved} | {_cell(verdict.feedback)} |"
        )
    markdown = "\n".join(
        [
            "Each task generates an instance from the seed, the embedded model answers greedily, and the task's "
            "verifier returns a score in [0, 1], solved or not, and feedback naming what is wrong. A 135M model "
            "mostly fails; the feedback is what Mind Evolution's refinement reads and the score what GRPO "
            "rewards.",
            "",
            *table,
            "",
            f"ARC-Easy on {count} test questions: answering with a letter {letters}/{count} "
            f"({letters / count:.0%}), cloze scoring of the option texts {cloze}/{count} ({cloze / count:.0%}); "
            f"chance {chance:.0%}. Small models pick letters near chance but rank option texts better.",
        ]
    )
    return DemoSection(title="Verifiable tasks", markdown=markdown, figures=[figure])
