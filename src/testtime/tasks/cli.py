"""``testtime tasks list | show | check | audit``: browse the verifiable tasks, check an answer by hand, and
read the completions a run rewarded."""

from __future__ import annotations

import json
import math
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
_MAX_BYTES = 64 << 20  # an answer file, or one line of a completions file (verifiers read at most 1 MB)


def _read_bounded(handle, what: str) -> str:  # noqa: ANN001
    """At most ``_MAX_BYTES`` bytes of a binary stream as text; longer (``/dev/zero``) is an error."""
    data = handle.read(_MAX_BYTES + 1)
    if len(data) > _MAX_BYTES:
        raise UserError(f"{what} is longer than {_MAX_BYTES >> 20} MB")
    return data.decode("utf-8", errors="replace")


def _verify_quietly(task, instance, text: str, where: str):  # noqa: ANN001, ANN202
    """A verdict; a verifier's warning (a malformed instance) becomes one line on stderr."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        verdict = task.verify(instance, text)
    for warning in caught:
        typer.echo(f"warning: {where}: {str(warning.message).splitlines()[0][:300]}", err=True)
    return verdict


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
        answer = _read_bounded(sys.stdin.buffer, "the answer on stdin")
    else:
        try:
            with answer_file.open("rb") as handle:
                answer = _read_bounded(handle, f"the answer file {answer_file}")
        except OSError as exc:
            raise UserError(f"cannot read the answer file {answer_file}: {exc.strerror}") from None
    task_obj, instance = _one_instance(task, seed, split, difficulty)
    verdict = _verify_quietly(task_obj, instance, answer, str(answer_file))
    typer.echo(json.dumps({"task": task, "id": instance.id, **verdict.to_dict()}, ensure_ascii=False))


_COMPLETION_KEYS = ("completion", "answer", "response", "text")


def _audit_rows(path: Path):  # noqa: ANN202  (yields (line number, task, instance, answer text))
    from testtime.tasks.base import Instance, completion_text, get_task

    try:
        handle = path.open("rb")
        first = handle.readline(_MAX_BYTES + 1)
    except OSError as exc:
        raise UserError(f"cannot read the completions file {path}: {exc.strerror}") from None
    tasks: dict[str, object] = {}

    def lines():  # noqa: ANN202
        line = first
        while line:
            if len(line) > _MAX_BYTES:
                raise UserError(f"{path}:{number + 1}: a line longer than {_MAX_BYTES >> 20} MB")
            yield line.decode("utf-8", errors="replace")
            try:
                line = handle.readline(_MAX_BYTES + 1)
            except OSError as exc:
                raise UserError(f"cannot read the completions file {path}: {exc.strerror}") from None

    number = 0
    with handle:
        for number, line in enumerate(lines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise UserError(f"{path}:{number}: not a JSON object") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: not a JSON object")
            raw = row.get("instance")
            if isinstance(raw, str):
                try:
                    raw = json.loads(raw)
                except ValueError:
                    raw = None
            if not isinstance(raw, dict) or not {"task", "id", "data"} <= set(raw):
                raise UserError(f"{path}:{number}: needs an 'instance' (an Instance.to_dict() object)")
            key = next((k for k in _COMPLETION_KEYS if k in row), None)
            if key is None:
                raise UserError(f"{path}:{number}: needs one of {', '.join(_COMPLETION_KEYS)}")
            name = str(row.get("task") or raw["task"])
            if name not in tasks:
                tasks[name] = get_task(name)
            yield number, tasks[name], Instance.from_dict(raw), completion_text(row[key])


@tasks_app.command("audit")
def audit_command(
    completions: Path = typer.Argument(
        ...,
        help="JSONL file: one object per line with 'instance' (Instance.to_dict()) and 'completion' "
        "(text or chat messages; 'answer', 'response' or 'text' also work); 'task' is optional.",
    ),
    min_score: float = typer.Option(
        0.0,
        "--min-score",
        min=0.0,
        help="Print completions scoring above this (default: every rewarded one).",
    ),
    chars: int = typer.Option(600, "--chars", help="Characters of each completion to print (head and tail)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per rewarded completion instead."),
) -> None:
    """Re-verify a run's completions and print the rewarded ones with their verdicts, for a person to read
    (look for answers that score without solving the problem)."""
    from testtime.tasks.parsing import excerpt

    if not 20 <= chars <= 1_000_000:
        raise UserError(f"--chars must be between 20 and 1000000, got {chars}")
    if not (math.isfinite(min_score) and 0.0 <= min_score < 1.0):
        raise UserError(f"--min-score must be in [0, 1) (scores lie in [0, 1]), got {min_score}")
    total = rewarded = solved = 0
    for number, task, instance, text in _audit_rows(completions):
        total += 1
        verdict = _verify_quietly(task, instance, text, f"{completions}:{number}")
        solved += verdict.solved
        if verdict.score <= min_score:
            continue
        rewarded += 1
        if as_json:
            record = {"line": number, "task": instance.task, "id": instance.id, **verdict.to_dict()}
            typer.echo(json.dumps({**record, "completion": excerpt(text, chars)}, ensure_ascii=False))
            continue
        typer.echo(
            f"--- line {number}: {instance.task} {instance.id}  score {verdict.score:.3f}  solved {verdict.solved}"
        )
        typer.echo(f"feedback: {excerpt(verdict.feedback, 400)}")
        typer.echo(excerpt(text, chars))
    summary = f"{total} completions, {rewarded} scored above {min_score:g}, {solved} solved"
    typer.echo(summary, err=as_json)


def register(app: typer.Typer) -> None:
    """Add ``testtime tasks ...`` to the CLI."""
    app.add_typer(tasks_app, name="tasks")
