"""Titans under FSDP2 with 2 gloo processes reproduces the single-process run (the whole model is one unit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.mark.slow
def test_fsdp_two_processes_match_single_process(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [
        "titans",
        "train",
        "--preset",
        "tiny",
        "--max-steps",
        "4",
        "--logger",
        "jsonl",
        "--threads",
        "1",
        "--set",
        "log_every=1",
    ]
    single = subprocess.run(
        [sys.executable, "-m", "testtime", *common, "--out", str(tmp_path / "single")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    multi = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "testtime",
            *common,
            "--out",
            str(tmp_path / "fsdp"),
            "--parallel",
            "fsdp",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert multi.returncode == 0, multi.stdout + multi.stderr
    a, b = _losses(tmp_path / "single"), _losses(tmp_path / "fsdp")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5), step
