"""``testtime r1``: each stage runs on a tiny saved Llama; bad values are one line and exit status 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from testtime.cli import app


def last_json(output: str) -> dict:
    """The JSON object on the last line (stderr progress text may share the line in CliRunner)."""
    line = output.strip().splitlines()[-1]
    return json.loads(line[line.index('{"') :])


def run(args):
    return CliRunner().invoke(app, ["r1", *args])


def test_stages_run_end_to_end(tmp_path, tiny_llama_dir):
    common = ["--model", str(tiny_llama_dir), "--threads", "1"]
    knobs = ["--task", "arithmetic", "--difficulty", "digits=1,terms=2"]
    sft = run(
        [
            "sft",
            *common,
            *knobs,
            "--num-problems",
            "8",
            "--max-steps",
            "2",
            "--no-progress",
            "--out",
            str(tmp_path / "sft"),
        ]
    )
    assert sft.exit_code == 0, sft.output
    assert (tmp_path / "sft" / "policy" / "config.json").is_file()
    assert len((tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()) == 2
    grpo = run(
        [
            "grpo",
            "--model",
            str(tmp_path / "sft" / "policy"),
            "--threads",
            "1",
            *knobs,
            "--num-problems",
            "4",
            "-n",
            "2",
            "--prompts-per-step",
            "2",
            "--max-new-tokens",
            "4",
            "--max-steps",
            "2",
            "--lr",
            "1e-3",
            "--no-progress",
            "--out",
            str(tmp_path / "grpo"),
        ]
    )
    assert grpo.exit_code == 0, grpo.output
    summary = last_json(grpo.output)
    assert summary["steps"] == 2
    assert (tmp_path / "grpo" / "policy" / "model.safetensors").is_file()
    generated = CliRunner().invoke(  # a saved policy is an ordinary model folder for `testtime llm`
        app,
        [
            "llm",
            "generate",
            "1+1=",
            "--raw",
            "--model",
            str(tmp_path / "grpo" / "policy"),
            "--max-new-tokens",
            "3",
        ],
    )
    assert generated.exit_code == 0, generated.output
    assert len((tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()) == 2
    evaluated = run(
        [
            "eval",
            "--model",
            str(tmp_path / "grpo" / "policy"),
            "--threads",
            "1",
            *knobs,
            "--num-problems",
            "3",
            "-n",
            "2",
            "--seeds",
            "0,1",
            "--max-new-tokens",
            "4",
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    assert evaluated.exit_code == 0, evaluated.output
    result = last_json(evaluated.output)
    assert result["problems"] == 3 and len(result["per_seed_mean_at_k"]) == 2
    rows = [json.loads(line) for line in (tmp_path / "eval" / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 + 3 * 2 * 2
    assert set(rows[0]) >= {"task", "instance", "completion", "reward"}
    sample = run(
        [
            "sample",
            *common,
            *knobs,
            "--num-problems",
            "2",
            "-n",
            "2",
            "--max-new-tokens",
            "4",
            "--out",
            str(tmp_path / "rs"),
        ]
    )
    assert sample.exit_code == 0, sample.output
    assert (tmp_path / "rs" / "sft.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["grpo", "--task", "nope"], "nope"),
        (["grpo", "--loss-type", "ppo", "--task", "arithmetic"], "loss_type"),
        (["grpo", "-n", "1"], "num_generations"),
        (["grpo", "--temperature", "0"], "temperature"),
        (["grpo", "--rewards", "speed"], "--rewards: unknown reward"),
        (["sft", "--template", "fancy"], "template"),
        (["sample", "--template", "fancy"], "template"),
        (["eval", "--template", "fancy"], "template"),
        (["grpo", "--difficulty", "digits"], "KEY=INT"),
        (["grpo", "--difficulty", "size=3"], "knob"),
        (["grpo", "--split", "validation"], "split"),
        (["grpo", "--template", "fancy"], "template"),
        (["grpo", "--threads", "0"], "--threads"),
        (["grpo", "--device", "tpu"], "--device"),
        (["sft"], "exactly one"),
        (["sft", "--data", "/nonexistent.jsonl"], "no such file"),
        (["sft", "--task", "travelplanner"], "cold-start"),
        (["eval", "--seeds", "a,b"], "--seeds"),
        (["eval", "--num-problems", "0"], "--num-problems"),
        (["eval", "--top-p", "2"], "--top-p"),
        (["sample", "--num-samples", "0"], "--num-samples"),
        (["grpo", "--lr", "inf"], "learning_rate"),
        (["grpo", "--seed", "-1"], "--seed"),
        (["grpo", "--out", "a_file"], "is a file"),
        (["sft", "--task", "arithmetic", "--max-steps", "0"], "--max-steps"),
        (["sft", "--task", "arithmetic", "--epochs", "nan"], "epochs"),
        (["sft", "--task", "arithmetic", "--out", "a_file"], "is a file"),
        (["sample", "--temperature", "nan"], "--temperature"),
        (["sample", "--out", "a_file"], "is a file"),
        (["distill", "--teacher", "smollm2", "--lr", "nan"], "learning_rate"),
        (["eval", "--seeds", ",,"], "--seeds"),
        (["eval", "--seeds", "99999999999999999999"], "--seeds must be in"),
        (["eval", "--out", "a_file"], "is a file"),
        (["grpo", "--num-problems", str(10**40)], "--num-problems"),
        (["grpo", "--max-steps", str(10**40)], "--max-steps"),
        (["grpo", "--prompts-per-step", "0"], "--prompts-per-step"),
        (["grpo", "--grad-accum", str(10**40)], "--grad-accum"),
        (["grpo", "--save-every", "-5"], "--save-every"),
        (["grpo", "--device", "cuda:x"], "--device"),
        (["eval", "--num-samples", "-5"], "--num-samples"),
        (["eval", "--temperature", "0"], "--temperature"),
        (["sft", "--task", "arithmetic", "--batch-size", "0"], "--batch-size"),
        (["distill", "--teacher", "smollm2", "--max-new-tokens", str(10**40)], "--max-new-tokens"),
    ],
)
def test_bad_values_are_one_line_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    result = run(args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "\u256d" not in result.output, result.output  # one line, no usage box


def test_bad_jsonl_line_is_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\nnot json\n')
    result = run(["sft", "--data", str(bad), "--model", str(tmp_path)])
    assert result.exit_code == 2 and "bad.jsonl:2" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe\x00garbage\n", "not UTF-8"),
        (b'{"prompt": 3, "completion": "b"}\n', "SFT row 1: 'prompt'"),
        (
            b'{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": null}\n',
            "SFT row 2: 'completion'",
        ),
        (b'{"prompt": [{"role": "user"}], "completion": "b"}\n', "SFT row 1: 'prompt'"),
    ],
)
def test_bad_sft_rows_fail_before_loading_a_model(content, message, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    result = run(["sft", "--data", str(bad), "--model", str(tmp_path / "no-model-here")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output
