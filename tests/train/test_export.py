"""``lm export`` / ``deepseek export``: the written folder decodes like the run it came from.

A run folder is written directly (a checkpoint of a randomly initialised tiny model with large initial
weights, so that greedy decoding has clear margins and varied tokens); then the run's own sampler
(``lm sample`` / ``deepseek generate``), ``llm generate --model EXPORTED`` and plain transformers
``AutoModelForCausalLM.from_pretrained`` must give the same greedy continuation. The equivalence tests
import transformers (tens of seconds on a loaded CPU), hence slow; the refusals are checked before any
import and stay in the default suite.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

PROMPT = "ROMEO:"
NEW = 16


def write_run(folder: Path, model: str, preset: str, overrides: dict[str, Any], *, seed: int = 0) -> Path:
    """A run folder holding one checkpoint of a freshly initialised ``model`` (byte tokenizer)."""
    from safetensors.torch import save_file

    from testtime.train.registry import build_model, get_model_spec, resolve_model_config
    from testtime.train.tokenizer import ByteTokenizer

    spec = get_model_spec(model)
    config = resolve_model_config(spec, preset, overrides)
    tokenizer = ByteTokenizer()
    torch.manual_seed(seed)
    built = build_model(spec, config, vocab_size=tokenizer.vocab_size)
    ckpt = folder / "checkpoints" / "step_000001"
    ckpt.mkdir(parents=True)
    weights = {k: v.detach().contiguous().clone() for k, v in built.state_dict().items()}
    save_file(weights, str(ckpt / "model.safetensors"))
    saved = {
        "model": model,
        "preset": preset,
        "model_config": overrides,
        "seq_len": 64,
        "corpus": ["shakespeare"],
    }
    (ckpt / "config.yaml").write_text(yaml.safe_dump(saved))
    tokenizer.save(ckpt / "tokenizer.json")
    torch.save({"step": 1}, ckpt / "trainer.pt")
    (folder / "checkpoints" / "latest").write_text("step_000001\n")
    return folder


def _transformers_greedy(folder: Path) -> tuple[str, float]:
    """Greedy continuation of PROMPT by plain transformers, and the smallest top-1 / top-2 logit margin."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    out = model.generate(
        ids, max_new_tokens=NEW, do_sample=False, output_scores=True, return_dict_in_generate=True
    )
    margin = min(float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores)
    return tokenizer.decode(out.sequences[0, ids.shape[1] :]), margin


def _llm_generate(folder: Path) -> str:
    from testtime.cli import app

    result = CliRunner().invoke(
        app,
        ["llm", "generate", "--model", str(folder), "--raw", PROMPT, "--temperature", "0"]
        + ["--max-new-tokens", str(NEW), "--json"],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1 and rows[0]["completion_tokens"] == NEW
    return rows[0]["text"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "model", "overrides", "sample"),
    [
        ("lm", "transformer", {"init_std": 0.5}, ["lm", "sample"]),
        ("deepseek", "deepseek-v3", {"initializer_range": 0.5}, ["deepseek", "generate"]),
    ],
)
def test_export_decodes_like_the_run(family, model, overrides, sample, tmp_path: Path) -> None:
    from testtime.cli import app

    torch.set_num_threads(1)
    run = write_run(tmp_path / "run", model, "tiny", overrides)
    runner = CliRunner()
    ours = runner.invoke(
        app, [*sample, str(run), "--prompt", PROMPT, "--temperature", "0", "--max-new-tokens", str(NEW)]
    )
    assert ours.exit_code == 0, ours.output
    ours_text = ours.output.splitlines()[0].removeprefix(PROMPT)
    exported = runner.invoke(app, [family, "export", str(run), str(tmp_path / "exported")])
    assert exported.exit_code == 0, exported.output
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    expected = {"lm": "LlamaForCausalLM", "deepseek": "DeepseekV3ForCausalLM"}[family]
    assert config["architectures"] == [expected]
    theirs, margin = _transformers_greedy(tmp_path / "exported")
    assert margin > 1e-3  # decisive argmaxes: equal tokens are not luck of float rounding
    assert len(set(theirs)) > 4  # varied output, not one repeated token
    assert theirs == ours_text
    assert _llm_generate(tmp_path / "exported") == ours_text


@pytest.mark.parametrize(("family", "other"), [("lm", "deepseek-v3"), ("deepseek", "transformer")])
def test_export_refuses_another_family_and_a_full_folder(family, other, tmp_path: Path) -> None:
    from testtime.cli import app

    run = write_run(tmp_path / "run", other, "tiny", {})
    runner = CliRunner()
    wrong = runner.invoke(app, [family, "export", str(run), str(tmp_path / "out")])
    assert wrong.exit_code == 2 and "holds a" in wrong.output and "export" in wrong.output
    assert not (tmp_path / "out").exists()
    missing = runner.invoke(app, [family, "export", str(tmp_path / "nothing"), str(tmp_path / "out")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    own = write_run(tmp_path / "own", {"lm": "transformer", "deepseek": "deepseek-v3"}[family], "tiny", {})
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    refused = runner.invoke(app, [family, "export", str(own), str(full)])
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
