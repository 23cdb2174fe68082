"""``testtime deepseek ...`` as a user runs it: in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from testtime.deepseek import DeepSeekV3Config, DeepSeekV3ForCausalLM


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "testtime", "deepseek", *args], capture_output=True, text=True, timeout=timeout
    )


def test_generate_from_a_transformers_directory_and_user_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    DeepSeekV3ForCausalLM(DeepSeekV3Config.tiny(vocab_size=257)).save_pretrained(tmp_path)
    plain = _run("generate", str(tmp_path), "--prompt", "hi", "--max-new-tokens", "6")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith("hi") and "tokens/s" in plain.stderr
    spec = _run("generate", str(tmp_path), "--prompt", "hi", "--max-new-tokens", "6", "--speculative")
    assert spec.returncode == 0, spec.stderr
    assert spec.stdout == plain.stdout and "acceptance" in spec.stderr


def test_generate_user_errors(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from testtime.deepseek.cli import register
    from testtime.errors import UserError

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    missing = runner.invoke(app, ["deepseek", "generate", str(tmp_path / "missing")])
    assert isinstance(missing.exception, UserError) and "does not exist" in str(missing.exception)
    greedy_only = runner.invoke(
        app, ["deepseek", "generate", str(tmp_path), "--speculative", "--temperature", "1"]
    )
    assert isinstance(greedy_only.exception, UserError)
    help_text = runner.invoke(app, ["deepseek", "--help"]).output
    assert "train" in help_text and "generate" in help_text


@pytest.mark.slow
def test_train_then_generate(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train = _run(
        "train",
        "--preset",
        "tiny",
        "--max-steps",
        "4",
        "--seq-len",
        "32",
        "--batch-size",
        "2",
        "--set",
        "warmup_steps=1",
        "--set",
        "eval_sequences=2",
        "--out",
        str(out),
        timeout=600,
    )
    assert train.returncode == 0, train.stderr
    gen = _run("generate", str(out), "--prompt", "ab", "--max-new-tokens", "4", "--speculative")
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("ab")
