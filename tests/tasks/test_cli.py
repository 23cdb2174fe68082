"""``testtime tasks list | show | check``."""

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
        ["tasks", "show", "gsm8k", "--split", "train"],
        ["tasks", "check", "countdown", "--answer-file", str(tmp_path / "missing.txt")],
    ):
        result = runner.invoke(app, args)
        assert isinstance(result.exception, UserError), args
