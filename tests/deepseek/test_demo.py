"""The DeepSeek-V3 part of ``testtime demo`` in quick mode."""

from __future__ import annotations

from pathlib import Path

import torch

from testtime.demo_base import DemoContext


def test_demo_part_runs_quickly(tmp_path: Path) -> None:
    from testtime.deepseek.demo import run

    threads = torch.get_num_threads()
    section = run(DemoContext(out_dir=tmp_path, quick=True))
    assert torch.get_num_threads() == threads  # restored
    assert "MaxVio" in section.markdown and "acceptance" in section.markdown
    assert all(fig.is_file() for fig in section.figures)
