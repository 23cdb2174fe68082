"""The Mind Evolution demo part in quick mode on the tiny offline Llama."""

from __future__ import annotations

from pathlib import Path

from testtime.demo_base import DemoContext
from testtime.llm.loading import load_model


def test_demo_part_runs_quickly_on_a_tiny_model(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from testtime.evolve import demo

    ctx = DemoContext(out_dir=tmp_path, quick=True)
    ctx._model, ctx._tokenizer = load_model(tiny_llama_dir)
    section = demo.run(ctx)
    assert section.title == "Mind Evolution"
    assert "lineage" in section.markdown and "| g1-i0-c0-t0 |" in section.markdown
    assert (tmp_path / "evolve_log.jsonl").exists()
