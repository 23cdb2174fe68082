"""`testtime titans train|eval|niah` end to end on a tiny model, and the offline task generators."""

from __future__ import annotations

import random

import pytest

from testtime.titans.niah import TASKS, evaluate_niah, make_sample


@pytest.mark.parametrize("task", TASKS)
def test_generated_samples_contain_their_answer(task):
    rng = random.Random(0)
    for length in (50, 400):
        sample = make_sample(task, length, count=lambda s: len(s.encode()), rng=rng)
        assert len(sample.prompt.encode()) >= length
        assert sample.answer in sample.prompt
        if task == "babilong":  # the answer is the asked person's LAST place
            person = sample.prompt.rsplit("Where is ", 1)[1].split("?")[0]
            last = sample.prompt.rsplit(f"{person} went to the ", 1)[1].split(".")[0]
            assert last == sample.answer


def test_evaluate_niah_with_an_oracle():
    """A model that copies the answer scores 1; a model that says something else scores 0."""
    import torch

    from testtime.train.tokenizer import ByteTokenizer

    tok = ByteTokenizer()

    class Oracle(torch.nn.Module):
        def __init__(self, right: bool) -> None:
            super().__init__()
            self.right = right

        def forward(self, ids):
            text = tok.decode(ids[0].tolist())
            question = text.rsplit("pass key is ", 1)
            key = text.split("The pass key is ")[1][:5] if self.right else "00000"
            done = len(question[1]) if len(question) > 1 else 0
            nxt = ord(key[done]) if done < 5 else ord(" ")
            logits = torch.zeros(1, ids.shape[1], 257)
            logits[0, -1, nxt] = 1.0
            return {"logits": logits}

    assert evaluate_niah(Oracle(True), tok, task="passkey", lengths=[80], num_samples=3) == {80: 1.0}
    assert evaluate_niah(Oracle(False), tok, task="passkey", lengths=[80], num_samples=3) == {80: 0.0}


def test_cli_train_eval_niah(tmp_path):
    from typer.testing import CliRunner

    from testtime.cli import _register_all, app

    _register_all()
    runner = CliRunner()
    out = tmp_path / "run"
    args = [
        "titans",
        "train",
        "--preset",
        "tiny",
        "--max-steps",
        "2",
        "--warmup-steps",
        "1",
        "--seq-len",
        "24",
    ]
    args += ["--batch-size", "2", "--micro-batch-size", "2", "--out", str(out), "--no-progress"]
    args += ["--set", "max_corpus_bytes=20000", "--set", "eval_sequences=2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["titans", "eval", str(out), "--seq-len", "40", "--sequences", "2"])
    assert res.exit_code == 0, res.output
    bpb = float(res.output.split(":")[1].split("bits")[0])
    assert 0 < bpb < 12
    res = runner.invoke(
        app, ["titans", "niah", str(out), "--length", "40", "--samples", "1", "--task", "word"]
    )
    assert res.exit_code == 0, res.output
    assert "word" in res.output


def test_demo_part_quick(tmp_path):
    from testtime.demo_base import DemoContext
    from testtime.titans.demo import needle_recall, run

    section = run(DemoContext(out_dir=tmp_path, quick=True))
    assert "needle" in section.markdown and "| 0.0 |" in section.markdown
    # without forgetting the needle is recalled; strong forgetting loses it in a long haystack
    assert needle_recall(256, alpha=0.0, trials=8) == 1.0
    assert needle_recall(256, alpha=0.03, trials=8) < 0.5


def test_bundled_needle_model_recalls_beyond_its_window():
    from safetensors.torch import load_model

    from testtime.titans.demo import NEEDLE_CHECKPOINT, needle_model, needle_model_accuracy

    assert NEEDLE_CHECKPOINT.is_file()
    untrained = needle_model("mac").eval()
    trained = needle_model("mac")
    missing, unexpected = load_model(trained, str(NEEDLE_CHECKPOINT))
    assert not missing and not unexpected
    trained.eval()
    # the needle sits in the first quarter of 128 tokens: beyond the 16-token window; chance is 1/16
    assert needle_model_accuracy(untrained, 128, 64, seed=3) < 0.25
    assert needle_model_accuracy(trained, 128, 64, seed=3) > 0.6
