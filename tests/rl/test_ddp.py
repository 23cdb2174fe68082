"""GRPO under 2 gloo processes (each sampling its share of the groups) equals one process on the same data."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~20 s: two interpreters import torch and transformers
def test_two_processes_equal_one(tmp_path, tiny_llama_dir):
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(tiny_llama_dir), str(tmp_path / "ddp")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    ddp = torch.load(tmp_path / "ddp" / "weights.pt")

    spec = importlib.util.spec_from_file_location("rl_ddp_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    single = worker.run(str(tiny_llama_dir), str(tmp_path / "single"))
    for key, value in single.items():
        torch.testing.assert_close(ddp[key], value, atol=1e-6, rtol=1e-5, msg=key)
    from testtime.llm.loading import load_model

    initial, _ = load_model(str(tiny_llama_dir))
    moved = sum(float((p.detach().float() - single[k]).abs().sum()) for k, p in initial.named_parameters())
    assert moved > 0
