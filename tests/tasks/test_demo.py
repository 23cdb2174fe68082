"""The tasks demo part runs end to end (quick mode) on the tiny offline Llama."""

from __future__ import annotations

from pathlib import Path

from testtime.demo_base import DemoContext
from testtime.llm.loading import load_model


def test_demo_part_runs_quickly_on_a_tiny_model(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from testtime.tasks import demo

    ctx = DemoContext(out_dir=tmp_path, quick=True)
    ctx._model, ctx._tokenizer = load_model(tiny_llama_dir)
    section = demo.run(ctx)
    assert section.title == "Verifiable tasks"
    assert "| countdown |" in section.markdown and "ARC-Easy on 4 test questions" in section.markdown
    assert [f.name for f in section.figures] == ["tasks_arc_easy.png"] and section.figures[
        0
    ].stat().st_size > 1000
