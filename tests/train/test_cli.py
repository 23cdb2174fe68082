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
    assert resolved["model_config"]["dim"] == 64 and resolved["model_config"]["num_heads"] == 4
    assert resolved["preset"] == "shakespeare"  # the default preset, named and expanded
    assert resolved["model_config"]["num_layers"] == 4
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
    with pytest.raises(UserError, match="did you mean 'threads'"):
        config_from_dict(parse_overrides(["thread=2"]))
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


def test_flag_names_are_config_keys() -> None:
    """--out / --threads / --logger and dashed names work as keys of --set and config files."""
    cfg = config_from_dict(parse_overrides(["out=runs/x", "threads=1", "logger=tensorboard", "max-steps=7"]))
    assert (cfg.out_dir, cfg.num_threads, cfg.loggers, cfg.max_steps) == ("runs/x", 1, ["tensorboard"], 7)


def test_each_family_has_its_own_run_folder(tmp_path: Path) -> None:
    from testtime.cli import app

    runner = CliRunner()
    for group, folder in (("lm", "runs/lm"), ("titans", "runs/titans"), ("deepseek", "runs/deepseek")):
        result = runner.invoke(app, [group, "train", "--preset", "tiny", "--dry-run"])
        assert result.exit_code == 0, result.output
        assert yaml.safe_load(result.output)["out_dir"] == folder


def test_dry_run_counts_parameters_and_warns_without_allocating() -> None:
    from testtime.cli import app
    from testtime.train.transformer import Transformer, TransformerConfig

    result = CliRunner().invoke(app, ["lm", "train", "--preset", "tiny", "--max-steps", "20", "--dry-run"])
    assert result.exit_code == 0, result.output
    expected = sum(p.numel() for p in Transformer(TransformerConfig.tiny(), vocab_size=257).parameters())
    assert f"# parameters: {expected:,}" in result.output
    assert "warmup_steps 30 >= max_steps 20" in result.output
    assert "estimated training memory" in result.output
    big = CliRunner().invoke(
        app,
        [
            "lm",
            "train",
            "--set",
            "model_config.dim=16384",
            "--set",
            "model_config.num_layers=64",
            "--dry-run",
        ],
    )
    assert big.exit_code == 0 and "but this machine has" in big.output  # 200B+ parameters, counted on meta


def test_train_help_shows_defaults() -> None:
    from testtime.cli import app

    out = CliRunner().invoke(app, ["lm", "train", "--help"], terminal_width=200).output
    for shown in ("600", "0.002", "transformer", "runs/lm", "auto", "1337"):
        assert f"default: ({shown})" in out, shown


def test_resuming_another_family_is_one_line_and_leaves_the_run_intact(tiny_cli_args, tmp_path: Path) -> None:
    """The issue's collision: a Titans run into a transformer's folder stops before writing anything."""
    from testtime.cli import app

    out = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(app, tiny_cli_args(out, "--max-steps", "2"))
    assert first.exit_code == 0, first.output
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    clash = runner.invoke(
        app, ["titans", "train", "--preset", "tiny", "--max-steps", "2", "--out", str(out), "--no-progress"]
    )
    assert clash.exit_code == 2
    errors = [line for line in clash.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "holds a 'transformer' run" in errors[0] and "--out" in errors[0]
    assert "Traceback" not in clash.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    reshaped = runner.invoke(app, tiny_cli_args(out, "--max-steps", "3", "--set", "model_config.dim=64"))
    assert (
        reshaped.exit_code == 2
        and "another shape" in reshaped.output
        and "dim: 32 there, 64 asked" in reshaped.output
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


_SIGINT_AT = {"step": 0, "calls": 0}


def _register_interrupting_model() -> None:
    """A tiny Transformer whose optimizer-step hook presses Ctrl-C (a real SIGINT) once, at a chosen step."""
    import signal

    from testtime.train.registry import register_model
    from testtime.train.transformer import Transformer, TransformerConfig

    class Interrupting(Transformer):
        def after_optimizer_step(self) -> None:
            _SIGINT_AT["calls"] += 1
            if _SIGINT_AT["calls"] == _SIGINT_AT["step"]:
                signal.raise_signal(signal.SIGINT)

    register_model(
        "ctrlc-test",
        config_cls=TransformerConfig,
        build=lambda config, vocab_size: Interrupting(config, vocab_size=vocab_size),
        presets={"tiny": TransformerConfig.tiny},
    )


def test_ctrl_c_saves_names_the_checkpoint_and_history_survives_resume(tiny_cli_args, tmp_path: Path) -> None:
    from testtime.cli import app

    _register_interrupting_model()
    out = tmp_path / "run"
    args = tiny_cli_args(out, "--model", "ctrlc-test", "--max-steps", "6", "--eval-every", "0")
    _SIGINT_AT.update(step=3, calls=0)
    runner = CliRunner()
    stopped = runner.invoke(app, args)
    assert stopped.exit_code == 130, stopped.output
    assert "interrupted at step 3" in stopped.output
    assert f"checkpoint {out / 'checkpoints' / 'step_000003'} is kept" in stopped.output
    assert f"Resume with: testtime lm train --out {out} --model ctrlc-test --preset tiny" in stopped.output
    assert "Traceback" not in stopped.output
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000003"
    _SIGINT_AT.update(step=0, calls=0)
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert "resumed from" in resumed.output
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in lines if "val/bpb" in r] == [6]
    # --no-progress: one line per log interval, and the evaluation line stays
    assert "step 5/6: loss" in resumed.output and "step 6/6: validation" in resumed.output
