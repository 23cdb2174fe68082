"""Two processes on gloo (DDP and FSDP2) reproduce the single-process run with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from testtime.train.loop import train


def _torchrun(args: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "testtime",
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


def _evals(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val/bpb"] for r in records if "val/bpb" in r}


@pytest.mark.parametrize("parallel", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_ddp_two_processes_match_single_process(parallel, tiny_config, tiny_cli_args, tmp_path) -> None:
    steps = 5
    # one process: 2 accumulation steps of 2 sequences; two processes: 1 micro-batch of 2 each
    single = train(tiny_config(max_steps=steps, out_dir=str(tmp_path / "single"), loggers=["jsonl"]))
    assert single.checkpoint is not None
    multi_dir = tmp_path / parallel
    stdout = _torchrun(
        tiny_cli_args(
            multi_dir,
            "--max-steps",
            str(steps),
            "--parallel",
            parallel,
            "--logger",
            "jsonl",
            "--eval-every",
            "2",
        )
    )
    assert "2 process(es) x 1 micro-batch(es) of 2" in stdout
    multi = _losses(multi_dir)
    assert sorted(multi) == list(range(1, steps + 1))
    for step, loss in single.losses.items():
        assert multi[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step
    assert multi[steps] < multi[1]  # it trained
    for step, bpb in single.evals.items():
        assert _evals(multi_dir)[step] == pytest.approx(bpb, rel=1e-5)
    a = load_file(str(single.checkpoint / "model.safetensors"))
    b = load_file(str(multi_dir / "checkpoints" / f"step_{steps:06d}" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_ddp_fsdp_checkpoint_resumes_in_one_process(tiny_config, tiny_cli_args, tmp_path) -> None:
    """Checkpoints hold full tensors by parameter name: an FSDP2 run continues in a single process."""
    sharded = tmp_path / "fsdp"
    _torchrun(tiny_cli_args(sharded, "--max-steps", "4", "--parallel", "fsdp", "--eval-every", "0"))
    single = tmp_path / "single"
    train(tiny_config(max_steps=4, out_dir=str(single), eval_every=0))
    # both continue to step 6 in one process from their own step-4 checkpoint
    from_sharded = train(tiny_config(max_steps=6, out_dir=str(sharded), eval_every=0))
    from_single = train(tiny_config(max_steps=6, out_dir=str(single), eval_every=0))
    assert sorted(from_sharded.losses) == [5, 6]
    for step in (5, 6):
        assert from_sharded.losses[step] == pytest.approx(from_single.losses[step], rel=1e-5)
