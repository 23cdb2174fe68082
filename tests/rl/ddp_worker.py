"""One rank of the 2-process GRPO check (run by tests/rl/test_ddp.py with RANK/WORLD_SIZE set)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from testtime.llm.loading import load_model
from testtime.rl.trainer import GRPOConfig, GRPOTrainer

PROMPTS = ["the cat sat", "a dog ran", "we see the sea", "to be or not"]


def run(model_dir: str, out: str) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    model, tokenizer = load_model(model_dir)
    model.float()
    vocab = len(tokenizer)

    def low_tokens(prompts, completions, completion_ids, **_):
        return [sum(t < vocab // 2 for t in ids) / max(len(ids), 1) for ids in completion_ids]

    config = GRPOConfig(
        num_generations=4,
        prompts_per_step=2,
        max_completion_length=5,
        learning_rate=0.5,
        optimizer="sgd",
        max_grad_norm=0,
        loss_type="dapo",
        max_steps=2,
        progress=False,
        save_policy=False,
        seed=3,
    )
    trainer = GRPOTrainer(
        model, tokenizer, [low_tokens], [{"prompt": p} for p in PROMPTS], config, out_dir=out
    )
    trainer.train(resume=False)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


if __name__ == "__main__":
    dist.init_process_group("gloo")
    weights = run(sys.argv[1], sys.argv[2])
    if dist.get_rank() == 0:
        torch.save(weights, Path(sys.argv[2]) / "weights.pt")
    dist.destroy_process_group()
