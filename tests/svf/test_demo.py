"""The SVF demo part runs end to end (quick mode) on the tiny offline Llama, training its expert on the spot."""

from __future__ import annotations

from pathlib import Path

import pytest

from testtime.demo_base import DemoContext
from testtime.llm.loading import load_model


def test_demo_part_runs_quickly_on_a_tiny_model(tiny_llama_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("testtime.rl.logprobs")
    from testtime.svf import demo

    ctx = DemoContext(out_dir=tmp_path, quick=True)
    ctx._model, ctx._tokenizer = load_model(tiny_llama_dir)
    section = demo.run(ctx)
    assert "Transformer" in section.title
    assert "trained now" in section.markdown and "| option | base p | adapted p |" in section.markdown
    assert "Cloze accuracy on 4 ARC-Easy test questions" in section.markdown
