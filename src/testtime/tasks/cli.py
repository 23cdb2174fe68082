"""``testtime tasks list | show | check``: browse the verifiable tasks and check an answer by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from testtime.errors import UserError

__all__ = ["register"]

tasks_app = typer.Typer(
    help="Verifiable tasks: list them, print an instance, check an answer.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_DIFFICULTY_HELP = (
    "A difficulty knob as KEY=VALUE (repeatable), e.g. --difficulty num_people=6; see `tasks list`."
)
_SPLIT_HELP = "The split (default: the task's first split; see `tasks list`)."


def _parse_difficulty(items: list[str] | None) -> dict[str, int]:
    knobs: dict[str, int] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--difficulty takes KEY=VALUE, got {item!r}")
        try:
            knobs[key.strip()] = int(value)
        except ValueError:
            raise UserError(f"--difficulty {key.strip()} needs an integer, got {value!r}") from None
    return knobs


def _one_instance(task_name: str, seed: int, split: str | None, difficulty: list[str] | None):  # noqa: ANN202
    from testtime.tasks.base import get_task

    task = get_task(task_name)
    instances = task.instances(split, seed=seed, n=1, **_parse_difficulty(difficulty))
    if not instances:
        raise UserError(f"task {task_name!r} has no instances")
    return task, instances[0]


@tasks_app.command("list")
def list_command() -> None:
    """List the tasks with their splits and difficulty knobs."""
    from testtime.tasks.base import get_task, list_tasks

    for name in list_tasks():
        task = get_task(name)
        knobs = ", ".join(f"{k}={v}" for k, v in task.difficulty.items()) or "-"
        typer.echo(f"{name:20s} {task.description}")
        typer.echo(f"{'':20s} splits: {', '.join(task.splits)}; difficulty: {knobs}")


@tasks_app.command("show")
def show_command(
    task: str = typer.Argument(..., help="Task name (see `testtime tasks list`)."),
    seed: int = typer.Option(
        0, "--seed", help="Which instance: generated from this seed, or data-set order."
    ),
    split: str = typer.Option(None, "--split", help=_SPLIT_HELP),
    difficulty: list[str] = typer.Option(None, "--difficulty", "-d", help=_DIFFICULTY_HELP),
    reference: bool = typer.Option(
        False, "--reference", help="Also print the reference (solver or gold) answer."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the whole instance as JSON instead of the prompt."
    ),
) -> None:
    """Print one instance: its prompt (or with --json, all its data)."""
    task_obj, instance = _one_instance(task, seed, split, difficulty)
    if as_json:
        typer.echo(json.dumps(instance.to_dict(), indent=2, ensure_ascii=False))
        return
    typer.echo(f"# {instance.task} {instance.id}\n")
    typer.echo(task_obj.prompt(instance))
    if reference:
        typer.echo(f"\n# reference answer\n{instance.reference}")


@tasks_app.command("check")
def check_command(
    task: str = typer.Argument(..., help="Task name (see `testtime tasks list`)."),
    answer_file: Path = typer.Option(
        ..., "--answer-file", "-a", help="File holding the answer text ('-': stdin)."
    ),
    seed: int = typer.Option(0, "--seed", help="Which instance (as for `tasks show`)."),
    split: str = typer.Option(None, "--split", help=_SPLIT_HELP),
    difficulty: list[str] = typer.Option(None, "--difficulty", "-d", help=_DIFFICULTY_HELP),
) -> None:
    """Verify an answer to one instance; prints one JSON object with score, solved and feedback."""
    if str(answer_file) == "-":
        answer = sys.stdin.read()
    else:
        try:
            answer = answer_file.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise UserError(f"cannot read the answer file {answer_file}: {exc.strerror}") from None
    task_obj, instance = _one_instance(task, seed, split, difficulty)
    verdict = task_obj.verify(instance, answer)
    typer.echo(json.dumps({"task": task, "id": instance.id, **verdict.to_dict()}, ensure_ascii=False))


def register(app: typer.Typer) -> None:
    """Add ``testtime tasks ...`` to the CLI."""
    app.add_typer(tasks_app, name="tasks")
