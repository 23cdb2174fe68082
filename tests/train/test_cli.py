"""`testtime lm train|sample|models`: configuration precedence, early errors, and an end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from testtime.errors import UserError
from testtime.train.cli import register
from testtime.train.config import TrainConfig, config_from_dict, load_config, parse_overrides, validate


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_config_precedence_file_then_flags_then_set(app, tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(
        "lr: 0.002\nmax_steps: 7\nwarmup_steps: 2\nmodel_config:\n  dim: 48\n  num_heads: 4\n"
    )
    result = CliRunner().invoke(
        app,
        ["lm", "train", "--config", str(tmp_path / "run.yaml"), "--max-steps", "9", "--set", "model_config.dim=64",
         "--set", "corpus=[shakespeare, stdlib]", "--dry-run"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert resolved["lr"] == 0.002 and resolved["max_steps"] == 9
    assert resolved["model_config"] == {"dim": 64, "num_heads": 4}
    assert resolved["corpus"] == ["shakespeare", "stdlib"]
    (tmp_path / "run.json").write_text(json.dumps({"seq_len": 64, "loggers": "jsonl", "lr": 1}))
    cfg = load_config(tmp_path / "run.json")
    assert cfg.seq_len == 64 and cfg.loggers == ["jsonl"] and cfg.lr == 1.0 and isinstance(cfg.lr, float)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (dict(batch_size=6, micro_batch_size=4), "multiple of micro_batch_size"),
        (dict(lr=-1.0), "lr must be positive"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(corpus=["/no/such/file.txt"]), "no such corpus"),
        (dict(loggers=["csv"]), "unknown logger"),
        (dict(model="no-such-model"), "unknown model"),
        (dict(preset="huge"), "no preset"),
        (dict(model_config={"depth": 3}), "unknown transformer config field"),
        (dict(model_config={"dim": 30}), "not divisible"),
        (dict(tokenizer="sentencepiece"), "tokenizer must be"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(parallel="tp"), "parallel must be"),
    ],
)
def test_bad_values_are_rejected_before_any_work(values, message) -> None:
    with pytest.raises(UserError, match=message):
        validate(config_from_dict(values))


def test_unknown_options_and_types_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown training option"):
        config_from_dict({"learning_rate": 1e-3})
    with pytest.raises(UserError, match="expected"):
        config_from_dict({"max_steps": "many"})
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_overrides(["lr"])
    assert parse_overrides(["run_name=null", "model_config.window=4"]) == {
        "run_name": None,
        "model_config": {"window": 4},
    }


def test_resume_never_refuses_a_run_folder_with_checkpoints(tmp_path: Path) -> None:
    from testtime.train.loop import _find_checkpoint

    root = tmp_path / "checkpoints"
    (root / "step_000001").mkdir(parents=True)
    (root / "step_000001" / "trainer.pt").write_bytes(b"")
    (root / "latest").write_text("step_000001\n")
    with pytest.raises(UserError, match="already has checkpoints"):
        _find_checkpoint(TrainConfig(resume="never"), root)
    assert _find_checkpoint(TrainConfig(resume="auto"), root) == root / "step_000001"
    assert _find_checkpoint(TrainConfig(resume=str(root)), root) == root / "step_000001"


def test_cli_error_is_one_line_with_status_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "testtime",
            "lm",
            "train",
            "--batch-size",
            "5",
            "--micro-batch-size",
            "2",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: batch_size 5 must be a multiple")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_train_then_sample_end_to_end(app, tiny_cli_args, tmp_path: Path) -> None:
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(
        app, tiny_cli_args(out, "--max-steps", "3", "--tokenizer", "bpe", "--set", "bpe_vocab_size=300")
    )
    assert result.exit_code == 0, result.output
    assert "checkpoint" in result.output
    saved = yaml.safe_load((out / "checkpoints" / "step_000003" / "config.yaml").read_text())
    assert saved["model_config"]["dim"] == 32 and saved["tokenizer"] == "bpe"  # resolved model fields saved
    sample = runner.invoke(
        app, ["lm", "sample", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--num-samples", "2"]
    )
    assert sample.exit_code == 0, sample.output
    assert sample.output.count("ROMEO:") == 2 and "--- sample 2 ---" in sample.output
    listing = runner.invoke(app, ["lm", "models"])
    assert "transformer" in listing.output and "shakespeare*" in listing.output
