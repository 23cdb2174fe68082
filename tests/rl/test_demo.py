"""The R1 demo part runs end to end (quick mode) on the tiny offline Llama."""

from __future__ import annotations

from testtime.demo_base import DemoContext
from testtime.llm.loading import load_model


def test_demo_part_runs_quickly_on_a_tiny_model(tiny_llama_dir, tmp_path):
    from testtime.rl import demo

    ctx = DemoContext(out_dir=tmp_path, quick=True)
    ctx._model, ctx._tokenizer = load_model(tiny_llama_dir)
    weights = {k: v.clone() for k, v in ctx._model.state_dict().items()}
    section = demo.run(ctx)
    assert "GRPO" in section.title and "| step | tag-count reward |" in section.markdown
    assert section.figures[0].is_file()
    assert (tmp_path / "r1_grpo" / "metrics.jsonl").is_file()
    for key, value in ctx._model.state_dict().items():  # the shared model is untouched
        assert (value == weights[key]).all(), key
