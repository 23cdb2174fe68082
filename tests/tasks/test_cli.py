"""``testtime tasks list | show | check | audit``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from testtime.errors import UserError
from testtime.tasks import get_task
from testtime.tasks.cli import register


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _root() -> None:
        """Root."""

    register(root)
    return root


def test_list_names_every_task(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["tasks", "list"])
    assert result.exit_code == 0
    for name in (
        "meeting-planning",
        "stegpoet",
        "travelplanner",
        "countdown",
        "arc-easy",
        "gsm8k",
        "humaneval",
    ):
        assert name in result.output
    assert "num_people=5" in result.output


def test_show_prints_the_prompt_and_reference(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["tasks", "show", "countdown", "--seed", "3", "--reference"])
    assert result.exit_code == 0
    instance = get_task("countdown").instances(seed=3)[0]
    assert get_task("countdown").prompt(instance) in result.output and instance.reference in result.output
    shown = CliRunner().invoke(
        app, ["tasks", "show", "meeting-planning", "--seed", "2", "-d", "num_people=2", "--json"]
    )
    data = json.loads(shown.output)
    assert data["data"] == get_task("meeting-planning").instances(seed=2, num_people=2)[0].data


def test_check_prints_one_json_verdict(app: typer.Typer, tmp_path: Path) -> None:
    task = get_task("trip-planning")
    instance = task.instances(seed=4, num_cities=3)[0]
    answer = tmp_path / "answer.txt"
    answer.write_text(instance.reference)
    result = CliRunner().invoke(
        app,
        [
            "tasks",
            "check",
            "trip-planning",
            "--seed",
            "4",
            "-d",
            "num_cities=3",
            "--answer-file",
            str(answer),
        ],
    )
    verdict = json.loads(result.output)
    assert result.exit_code == 0 and verdict["solved"] is True and verdict["score"] == 1.0
    assert set(verdict) >= {"score", "solved", "feedback"}
    result = CliRunner().invoke(
        app, ["tasks", "check", "countdown", "--answer-file", "-"], input="<answer>1+1</answer>"
    )
    assert json.loads(result.output)["solved"] is False


def test_user_mistakes_are_user_errors(app: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (
        ["tasks", "show", "nope"],
        ["tasks", "show", "countdown", "-d", "num_numbers"],
        ["tasks", "show", "countdown", "-d", "num_numbers=x"],
        ["tasks", "show", "gsm8k", "--split", "validation"],
        ["tasks", "check", "countdown", "--answer-file", str(tmp_path / "missing.txt")],
    ):
        result = runner.invoke(app, args)
        assert isinstance(result.exception, UserError), args


def test_audit_prints_the_rewarded_completions(app: typer.Typer, tmp_path: Path) -> None:
    task = get_task("countdown")
    first, second, third = task.instances(seed=0, n=3)
    rows = [
        {"instance": first.to_dict(), "completion": first.reference},
        {
            "instance": json.dumps(second.to_dict()),
            "completion": [{"role": "assistant", "content": "no idea"}],
        },
        {
            "task": "countdown",
            "instance": third.to_dict(),
            "answer": "<answer>" + third.reference + "</answer>",
        },
    ]
    path = tmp_path / "completions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    result = CliRunner().invoke(app, ["tasks", "audit", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.count("--- line") == 2 and "line 2" not in result.output
    assert "3 completions, 2 scored above 0, 2 solved" in result.output
    assert f"countdown {first.id}" in result.output and "Correct:" in result.output
    as_json = CliRunner().invoke(app, ["tasks", "audit", str(path), "--json"])
    records = [json.loads(line) for line in as_json.stdout.splitlines() if line.startswith("{")]
    assert [r["line"] for r in records] == [1, 3] and all(r["solved"] for r in records)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the completions file"),
        ("{not json\n", ":1: not a JSON object"),
        ("[1, 2]\n", ":1: not a JSON object"),
        ('{"completion": "x"}\n', ":1: needs an 'instance'"),
        ('{"instance": {"task": "countdown", "id": "x", "data": {}}}\n', ":1: needs one of completion"),
        ('{"instance": {"task": "nope", "id": "x", "data": {}}, "completion": ""}\n', "unknown task"),
    ],
)
def test_audit_errors_are_one_line(
    app: typer.Typer, tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "completions.jsonl"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(app, ["tasks", "audit", str(path)])
    assert isinstance(result.exception, UserError) and message in str(result.exception)


def test_hostile_files_are_one_line_errors_or_warnings(app: typer.Typer, tmp_path: Path) -> None:
    """Endless or binary files, a malformed instance: one line each, never a traceback or a memory error."""
    runner = CliRunner()
    if Path("/dev/zero").exists():
        for args in (["tasks", "audit", "/dev/zero"], ["tasks", "check", "countdown", "-a", "/dev/zero"]):
            result = runner.invoke(app, args)
            assert isinstance(result.exception, UserError) and "longer than" in str(result.exception), args
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 10)
    result = runner.invoke(app, ["tasks", "check", "countdown", "-a", str(binary)])
    assert result.exit_code == 0 and json.loads(result.stdout)["score"] == 0.0
    assert isinstance(runner.invoke(app, ["tasks", "audit", str(binary)]).exception, UserError)
    path = tmp_path / "completions.jsonl"
    path.write_text(
        '{"instance": {"task": "countdown", "id": "x", "data": "not a dict"}, "completion": "1"}\n'
    )
    result = runner.invoke(app, ["tasks", "audit", str(path)])
    assert result.exit_code == 0 and "1 completions, 0 scored" in result.stdout
    warning = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warning) == 1 and warning[0].startswith(f"warning: {path}:1: countdown: the verifier failed")
    result = runner.invoke(app, ["tasks", "audit", str(path), "--min-score", "nan"])
    assert result.exit_code == 2 and "--min-score" in result.output
