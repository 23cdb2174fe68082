"""Checkpoint round trip, retention, and exact resumption (in process, and after SIGKILL in a subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from testtime.train.checkpoint import latest_checkpoint, load_checkpoint
from testtime.train.loop import train
from testtime.train.registry import build_model, get_model_spec, resolve_model_config


def _fresh_model_and_optimizer(cfg):
    spec = get_model_spec(cfg.model)
    model = build_model(spec, resolve_model_config(spec, cfg.preset, cfg.model_config), vocab_size=257)
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
    )
    return model, optimizer


def test_checkpoint_round_trip_restores_weights_optimizer_and_state(tiny_config) -> None:
    cfg = tiny_config(max_steps=3, ckpt_every=3)
    result = train(cfg)
    ckpt = result.checkpoint
    assert ckpt is not None and ckpt.name == "step_000003"
    assert {p.name for p in ckpt.iterdir()} == {
        "model.safetensors", "optimizer.pt", "trainer.pt", "config.yaml", "tokenizer.json",
    }  # fmt: skip
    model, optimizer = _fresh_model_and_optimizer(cfg)
    state = load_checkpoint(ckpt, model=model, optimizer=optimizer)
    assert state["step"] == 3 and state["position"] == 3 * cfg.batch_size
    saved = load_file(str(ckpt / "model.safetensors"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert model.lm_head.weight is model.embed.weight  # tying survives loading
    saved_optim = torch.load(ckpt / "optimizer.pt", weights_only=False)["state"]
    names = [n for n, _ in model.named_parameters()]
    for name, param in zip(names, model.parameters(), strict=True):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizer.state[param][key], saved_optim[name][key]), (name, key)
    assert json.loads((ckpt / "tokenizer.json").read_text()) == {"testtime_tokenizer": "byte"}


def test_checkpoint_retention_and_latest_pointer(tiny_config) -> None:
    cfg = tiny_config(max_steps=6, ckpt_every=2, keep_checkpoints=2)
    train(cfg)
    root = Path(cfg.out_dir) / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_000004", "step_000006"]
    assert latest_checkpoint(root) == root / "step_000006"
    (root / "step_000008.tmp").mkdir()  # an interrupted save is never "latest"
    assert latest_checkpoint(root) == root / "step_000006"


def test_resume_in_process_matches_uninterrupted_bit_for_bit(tiny_config, tmp_path) -> None:
    full = train(tiny_config(max_steps=6, out_dir=str(tmp_path / "full"), ckpt_every=3))
    first = train(tiny_config(max_steps=6, out_dir=str(tmp_path / "part"), ckpt_every=3))
    root = tmp_path / "part" / "checkpoints"
    (root / "latest").write_text("step_000003\n")  # as if the run had stopped after step 3
    resumed = train(tiny_config(max_steps=6, out_dir=str(tmp_path / "part"), ckpt_every=3))
    assert first.losses == full.losses
    assert resumed.losses == {s: full.losses[s] for s in (4, 5, 6)}
    assert resumed.evals[6] == full.evals[6]
    a, b = (
        load_file(str(full.checkpoint / "model.safetensors")),
        load_file(str(resumed.checkpoint / "model.safetensors")),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)


def _run_cli(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "testtime", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _final(out: Path, step: int) -> tuple[float, dict[str, torch.Tensor]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    loss = [r["train/loss"] for r in records if r["step"] == step and "train/loss" in r][-1]
    return loss, load_file(str(out / "checkpoints" / f"step_{step:06d}" / "model.safetensors"))


def test_resume_after_sigkill_matches_uninterrupted_run(tiny_cli_args, tmp_path) -> None:
    steps = 60
    extra = ("--max-steps", str(steps), "--ckpt-every", "5", "--eval-every", "20", "--logger", "jsonl")
    killed_dir, full_dir = tmp_path / "killed", tmp_path / "full"
    proc = _run_cli(tiny_cli_args(killed_dir, *extra))
    deadline = time.time() + 120
    while (
        latest_checkpoint(killed_dir / "checkpoints") is None
        and proc.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = latest_checkpoint(killed_dir / "checkpoints")
    assert killed_at is not None and int(killed_at.name.removeprefix("step_")) < steps

    resumed = _run_cli(tiny_cli_args(killed_dir, *extra))
    uninterrupted = _run_cli(tiny_cli_args(full_dir, *extra))
    out_r, _ = resumed.communicate(timeout=300)
    out_u, _ = uninterrupted.communicate(timeout=300)
    assert resumed.returncode == 0, out_r.decode()
    assert uninterrupted.returncode == 0, out_u.decode()
    assert b"resumed from" in out_r
    loss_r, weights_r = _final(killed_dir, steps)
    loss_u, weights_u = _final(full_dir, steps)
    assert loss_r == loss_u
    assert weights_r.keys() == weights_u.keys()
    assert all(torch.equal(weights_r[k], weights_u[k]) for k in weights_u)


def test_resume_of_a_finished_run_does_nothing(tiny_config) -> None:
    first = train(tiny_config(max_steps=2))
    again = train(tiny_config(max_steps=2))
    assert again.step == 2 and again.losses == {} and again.checkpoint == first.checkpoint
