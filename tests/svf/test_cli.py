"""``testtime svf decompose|train|adapt|eval`` end to end on a tiny model; every bad value is one line, exit 2."""

from __future__ import annotations

import json

import pytest

from testtime.cli import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained(tiny_llama_dir, tmp_path_factory):
    """One expert trained by the CLI on ARC-Easy (1 step), shared by the tests."""
    pytest.importorskip("testtime.rl.logprobs")
    out = tmp_path_factory.mktemp("run")
    argv = ["svf", "train", "arc-easy", "-m", str(tiny_llama_dir), "--max-steps", "2", "--num-train", "6",
            "--batch-size", "2", "--eval-every", "1", "-o", str(out), "--no-progress", "--threads", "1"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code in (0, None)
    return out


def test_train_writes_expert_and_metrics(trained):
    from testtime.svf import load_expert

    expert = load_expert(trained / "expert.safetensors")
    assert expert.task == "arc-easy" and expert.metrics["steps"] == 2
    lines = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in line for line in lines) == 2 and sum("val_accuracy" in line for line in lines) == 3


def test_decompose(tiny_llama_dir, capsys):
    code, out, _ = _run(
        ["svf", "decompose", "-m", str(tiny_llama_dir), "--targets", "attn", "--no-progress"], capsys
    )
    assert code in (0, None)
    assert "matrices" in out and "8" in out


def test_eval_and_adapt(tiny_llama_dir, trained, tmp_path, capsys):
    expert = str(trained / "expert.safetensors")
    argv = ["svf", "eval", "arc-easy", "-e", expert, "-e", expert, "-m", str(tiny_llama_dir), "--num", "4",
            "--strategy", "fixed", "--strategy", "prompt", "--strategy", "few-shot", "--shots", "2",
            "--population", "2", "--generations", "1", "--max-new-tokens", "4", "-o", str(tmp_path / "ev")]  # fmt: skip
    code, out, err = _run(argv, capsys)
    assert code in (0, None), err
    for name in ("base", "fixed", "A prompt", "C few-shot"):
        assert name in out
    assert len((tmp_path / "ev" / "metrics.jsonl").read_text().splitlines()) == 4
    code, out, err = _run(
        ["svf", "adapt", "hello there", "-e", expert, "-m", str(tiny_llama_dir), "--max-new-tokens", "4",
         "--export", str(tmp_path / "exported")],
        capsys,
    )  # fmt: skip
    assert code in (0, None), err
    assert "[base]" in out and "[adapted]" in out
    assert (tmp_path / "exported" / "config.json").is_file()


@pytest.mark.parametrize(
    "extra",
    [
        ["svf", "train", "arc-easy", "--method", "bogus"],
        ["svf", "train", "arc-easy", "--knob", "digits"],
        ["svf", "train", "no-such-task"],
        ["svf", "train", "arc-easy", "--lr", "-1"],
        ["svf", "train", "arc-easy", "--layers", "99"],
        ["svf", "train", "arc-easy", "--baseline", "group"],
        ["svf", "decompose", "--targets", "nothing"],
        ["svf", "decompose", "--layers", "x-y"],
        ["svf", "decompose", "--layers", "0-100000000000"],
        ["svf", "train", "arc-easy", "--parameterization", "tanh"],
        ["svf", "eval", "arc-easy", "-e", "{expert}", "--env", "fuzzy"],
        ["svf", "eval", "arc-easy", "-e", "{expert}", "--knob", "digits"],
        ["svf", "eval", "arc-easy", "-e", "missing.safetensors"],
        ["svf", "eval", "arc-easy", "-e", "x", "--strategy", "magic"],
        ["svf", "eval", "arc-easy", "-e", "x", "--strategy", "few-shot", "--shots", "9", "--num", "5"],
        ["svf", "adapt", "hi", "-e", "missing.safetensors"],
        ["svf", "train", "arc-easy", "-o", "{file}"],
        ["svf", "eval", "arc-easy", "-e", "{expert}", "-o", "{file}"],
        ["svf", "adapt", "hi", "-e", "{expert}", "--export", "{file}"],
    ],
)
def test_bad_values_are_one_line_exit_2(extra, tiny_llama_dir, trained, tmp_path, capsys):
    (tmp_path / "a-file").write_text("keep me\n")
    names = {"{file}": str(tmp_path / "a-file"), "{expert}": str(trained / "expert.safetensors")}
    argv = [names.get(a, a) for a in extra]
    if "-m" not in argv:
        argv += ["-m", str(tiny_llama_dir)]
    code, _, err = _run(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    # One message: "error: ..." from testtime, or typer's usage error naming the flag.
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1 or "Usage" in err, err
    assert (tmp_path / "a-file").read_text() == "keep me\n"


def test_expert_on_another_base_model_is_a_clear_error(trained, tmp_path, capsys):
    from testtime.testing import save_tiny_llama

    other = save_tiny_llama(tmp_path / "deeper", num_layers=3)
    argv = ["svf", "adapt", "hi", "-e", str(trained / "expert.safetensors"), "-m", str(other)]
    code, _, err = _run(argv, capsys)
    assert code == 2 and "Traceback" not in err
    assert "trained on another base model" in err and "only applies to the exact model" in err, err
