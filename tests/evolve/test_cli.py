"""`testtime evolve run | compare | lineage` with the fake backend; bad values are one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from testtime.errors import UserError
from testtime.evolve.cli import register


def _invoke(*args: str):
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        pass

    return CliRunner().invoke(app, ["evolve", *args])


def _refused(*args: str) -> str:
    """Run through the real ``testtime`` root, as the shell does: exit status 2 and one error line."""
    from testtime.cli import app

    result = CliRunner().invoke(app, ["evolve", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_run_writes_a_resumable_log_and_prints_the_lineage(tmp_path):
    args = ["run", "--task", "countdown", "--backend", "fake", "--preset", "tiny", "--max-calls", "9"]
    first = _invoke(*args, "-o", str(tmp_path), "--no-progress")
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output.splitlines()[0])
    assert summary["calls"] == 9 and summary["stopped"] == "budget"
    assert "lineage:" in first.output
    assert (tmp_path / "metrics.jsonl").exists()
    again = _invoke(*args, "-o", str(tmp_path), "--no-progress")
    assert "resuming" in again.output
    assert json.loads(again.output.splitlines()[1])["cached_calls"] == 9
    lineage = _invoke("lineage", str(tmp_path / "log.jsonl"))
    assert lineage.exit_code == 0 and "score" in lineage.output


def test_compare_prints_a_table_and_plots(tmp_path):
    result = _invoke(
        "compare", "--task", "countdown", "--backend", "fake", "--max-calls", "4", "--num-instances", "2",
        "--seeds", "0,1", "--preset", "tiny", "--methods", "mind-evolution,best-of-n,one-pass",
        "-o", str(tmp_path), "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "| mind-evolution | 0/4" in result.output and "| one-pass |" in result.output
    assert (tmp_path / "success_vs_budget.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 2 * 2 and all(r["calls"] <= 4 for r in rows)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--task", "nope"], "unknown task"),
        (["--task", "countdown", "--backend", "zzz"], "--backend"),
        (["--task", "countdown", "--preset", "x"], "unknown preset"),
        (["--task", "countdown", "--set", "foo=1"], "no setting"),
        (["--task", "countdown", "--set", "num_islands=x"], "num_islands"),
        (["--task", "countdown", "--set", "critic"], "KEY=VALUE"),
        (["--task", "countdown", "--max-calls", "0"], "--max-calls"),
        (["--task", "countdown", "--max-calls", str(10**40)], "--max-calls"),
        (["--task", "countdown", "--max-total-tokens", "-5"], "--max-total-tokens"),
        (["--task", "countdown", "--max-total-tokens", str(10**40)], "--max-total-tokens"),
        (["--task", "countdown", "--threads", str(10**40)], "--threads"),
        (["--task", "countdown", "--concurrency", "100000"], "--concurrency"),
        (["--task", "countdown", "--concurrency", "0"], "--concurrency"),
        (["--task", "countdown", "--seed", "-1"], "--seed"),
        (["--task", "countdown", "-t", "-1"], "temperature"),
        (["--task", "countdown", "-d", "num_numbers=zz"], "integer"),
        (["--task", "countdown", "-d", "colour=3"], "knob"),
        (["--task", "countdown", "--method", "foo"], "unknown method"),
        (["--task", "countdown", "--method", "mind-evolution:bar"], "unknown ablation"),
        (["--task", "countdown", "--set", "num_reset=9"], "num_reset"),
        (["--task", "countdown", "--price-input", "-1"], "--price-input"),
        (["--task", "countdown", "--backend", "openai"], "--model"),
        (["--task", "countdown", "--threads", "0"], "--threads"),
        (["--task", "countdown", "-t", "nan"], "--temperature"),
        (["--task", "countdown", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["--task", "countdown", "--price-output", "inf"], "--price-output"),
        (["--task", "countdown", "--price-input", "nan"], "--price-input"),
        (["--task", "countdown", "--set", "selection_temperature=inf"], "selection_temperature"),
    ],
)
def test_bad_values_are_one_line_exit_2(tmp_path, args, words):
    if "--backend" not in args:
        args = [*args, "--backend", "fake"]
    assert words in _refused("run", *args, "-o", str(tmp_path), "--no-progress")
    assert not (tmp_path / "log.jsonl").exists()


def test_compare_bad_values(tmp_path):
    for args, words in (
        (["--seeds", "a"], "--seeds"),
        (["--methods", "foo"], "unknown method"),
        (["--max-calls", "0"], "--max-calls"),
        (["--num-instances", "0"], "--num-instances"),
        (["--parallel-runs", "0"], "--parallel-runs"),
        (["--parallel-runs", str(10**40)], "--parallel-runs"),
        (["--seeds", "-1"], "--seeds"),
        (["--instance-seed", "-1"], "--instance-seed"),
        (["--methods", ",,"], "at least one method"),
        (["--methods", "one-pass,one-pass"], "twice"),
        (["--seeds", "0,0"], "twice"),
        (["--num-instances", "100000000"], "--num-instances"),
    ):
        base = [
            "compare",
            "--task",
            "countdown",
            "--backend",
            "fake",
            "--max-calls",
            "3",
            "-o",
            str(tmp_path),
        ]
        assert words in _refused(*base, *args)
    missing = _invoke("lineage", str(tmp_path / "none.jsonl"))
    assert isinstance(missing.exception, UserError)


def test_exit_status_2_through_the_real_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "testtime", "evolve", "run", "--task", "countdown", "--backend", "zzz"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--backend" in result.stderr


def test_an_unusable_run_folder_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for command in ("run", "compare"):
        result = _invoke(
            command,
            "--task",
            "countdown",
            "--backend",
            "fake",
            "--max-calls",
            "2",
            "-o",
            str(blocker / "sub"),
        )
        assert isinstance(result.exception, UserError) and "run folder" in str(result.exception)
    (tmp_path / "dir" / "log.jsonl").mkdir(parents=True)
    result = _invoke("run", "--task", "countdown", "--backend", "fake", "-o", str(tmp_path / "dir"))
    assert isinstance(result.exception, UserError) and "not a file" in str(result.exception)


def _logged_run(folder) -> list[str]:
    args = ["run", "--task", "countdown", "--backend", "fake", "--preset", "tiny", "--max-calls", "6"]
    result = _invoke(*args, "-o", str(folder), "--no-progress")
    assert result.exit_code == 0, result.output
    return args


def test_a_damaged_log_is_refused_and_left_unchanged(tmp_path):
    args = _logged_run(tmp_path)
    log = tmp_path / "log.jsonl"
    lines = log.read_text().splitlines()
    for damage, words in (
        ("garbage{", "line 3 is not a JSON record"),
        (lines[2].replace('"score": ', '"score": "high", "x": '), "score"),
        (lines[2].replace('"attempts": 1', '"attempts": 0'), "attempts"),
        ('{"kind": "candidate"}', "no candidate id"),
        ('{"kind": "header"}', "second header"),
        ("[1, 2]", "not a JSON object"),
    ):
        text = "\n".join([*lines[:2], damage, *lines[3:]]) + "\n"
        log.write_text(text)
        for command in ([*args, "-o", str(tmp_path), "--no-progress"], ["lineage", str(log)]):
            result = _invoke(*command)
            assert isinstance(result.exception, UserError), (damage, result.output)
            assert words in str(result.exception) and "\n" not in str(result.exception)
        assert log.read_text() == text  # nothing lost
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "log.jsonl").write_text("my notes, not a log")
    result = _invoke(*args, "-o", str(tmp_path / "other"))
    assert isinstance(result.exception, UserError) and "not a run log" in str(result.exception)
    assert (tmp_path / "other" / "log.jsonl").read_text() == "my notes, not a log"


def test_a_truncated_log_resumes_and_keeps_the_cut_bytes(tmp_path):
    args = _logged_run(tmp_path / "whole")
    whole = (tmp_path / "whole" / "log.jsonl").read_text()
    log = tmp_path / "cut" / "log.jsonl"
    log.parent.mkdir()
    cut = whole[: len(whole) - 50]  # the last record cut short by a kill
    log.write_text(cut)
    result = _invoke(*args, "-o", str(log.parent), "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[1])["cached_calls"] == 5  # the cut call is asked again
    side = (tmp_path / "cut" / "log.jsonl.cut").read_text()
    assert side.strip() == cut[cut.rstrip("\n").rfind("\n") + 1 :].strip()  # the partial line, kept aside
    from testtime.evolve.log import canonical, read_log

    assert canonical(read_log(log)) == canonical(read_log(tmp_path / "whole" / "log.jsonl"))
    # a whole last record without its newline: the next record starts on a new line
    log.write_text(whole.rstrip("\n"))
    again = _invoke(*args[:-1], "8", "-o", str(log.parent), "--no-progress")
    assert again.exit_code == 0, again.output
    assert len(read_log(log)) == 1 + 8
