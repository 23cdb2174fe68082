"""The command-line tool, run as a user runs it: in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testtime.testing import embedded_available

requires_embedded = pytest.mark.skipif(not embedded_available(), reason="embedded model not installed")


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "testtime", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_demo_and_explains() -> None:
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout
    assert "Titans" in result.stdout
    demo = _run("demo", "--help")
    assert demo.returncode == 0
    for option in ("--model", "--out", "--seed", "--only", "--quick"):
        assert option in demo.stdout


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("testtime ")


def test_bad_model_is_one_clear_line_not_a_traceback(tmp_path: Path) -> None:
    result = _run("demo", "--model", str(tmp_path / "missing.gguf"), "--out", str(tmp_path))
    assert result.returncode == 2
    assert "error: GGUF file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_demo_part_is_rejected(tmp_path: Path) -> None:
    result = _run("demo", "--only", "nonsense", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "unknown demo part" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_llm_part_on_tiny_model(tiny_llama_dir: Path, tmp_path: Path) -> None:
    result = _run("demo", "--model", str(tiny_llama_dir), "--only", "llm", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    reports = list(tmp_path.glob("*/report.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    assert "The embedded model answers" in text
    assert "What is the capital of France?" in text


@requires_embedded
def test_demo_answers_with_the_embedded_model(tmp_path: Path) -> None:
    # Uses the user's cache so that the one-time GGUF conversion is shared with `testtime demo`.
    env = {k: v for k, v in os.environ.items() if k != "TESTTIME_CACHE"}
    result = subprocess.run(
        [sys.executable, "-m", "testtime", "demo", "--only", "llm", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


@pytest.mark.parametrize("entry", [["testtime"], [sys.executable, "-m", "testtime"]])
def test_both_entry_points(entry: list[str]) -> None:
    exe = Path(sys.executable).parent / "testtime"
    cmd = [str(exe)] if entry == ["testtime"] else entry
    result = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "Usage" in result.stdout


def test_help_is_fast_and_imports_no_torch() -> None:
    """`testtime --help` lists the command groups from a table: no system module, no torch."""
    code = (
        "import sys\n"
        "from testtime.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('testtime.train', "
        "'testtime.titans', 'testtime.deepseek', 'testtime.llm', 'transformers')))\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    for group in ("demo", "tasks", "lm", "titans", "deepseek"):
        assert group in result.stdout


def test_lazy_table_skips_absent_modules_and_loads_on_demand(monkeypatch) -> None:
    from typer.testing import CliRunner

    import testtime.cli as cli

    monkeypatch.setitem(cli.COMMANDS, "nothere", ("testtime.no_such_system.cli", "absent"))
    runner = CliRunner()
    listing = runner.invoke(cli.app, ["--help"])
    assert listing.exit_code == 0 and "nothere" not in listing.output and "titans" in listing.output
    assert runner.invoke(cli.app, ["nothere"]).exit_code == 2
    sub = runner.invoke(cli.app, ["titans", "--help"])
    assert sub.exit_code == 0 and "niah" in sub.output
    typo = runner.invoke(cli.app, ["titan"])
    assert typo.exit_code == 2 and "Did you mean 'titans'" in typo.output


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_non_finite_numbers_are_named_as_such(value: str, capsys) -> None:
    """A NaN or infinity fails typer's range check first; the message says what is wrong with it instead of
    naming a bound it does not exceed."""
    from testtime.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["llm", "generate", "--temperature", value, "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and f"{value} is not a finite number" in err and "--temperature" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_out_of_range_finite_numbers_keep_the_range_message(capsys) -> None:
    from testtime.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["llm", "generate", "--temperature", "500", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "less than or equal to 100" in err and "finite" not in err
