"""Trainable parameters and seconds per RL step: SVF (MLP z vectors) against LoRA r=16 on q and v, same run.

Both train on the embedded SmolLM2-135M-Instruct in the same REINFORCE loop (:mod:`testtime.svf.reinforce`):
one step = rollouts of ``--batch-size`` arithmetic prompts sampled through the LLM layer (SVF: merged
weights on the engine's lean path; LoRA: the PEFT model on the engine's fallback path), log-probs with
gradients (SVF: factored forward; LoRA: PEFT forward), KL to the base model, backward, clipping, Adam.
The two are timed interleaved (SVF, LoRA, SVF, LoRA, ...) after one warm-up step each, and medians are
reported. A second, narrower timing covers the gradient part alone (the same fixed rollouts for both:
log-probs + KL + backward + step), and the SVF merge alone (writing ``W'`` into the weights for the engine).

Usage::

    python benchmarks/svf_vs_lora.py [--steps 3] [--batch-size 4] [--max-new-tokens 24] [--threads 1]

The last line printed is one JSON object with ``param_ratio`` (LoRA / SVF trainable parameters; goal
>= 10) and ``step_time_ratio`` (LoRA / SVF median seconds per RL step; goal >= 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from testtime.llm.loading import load_model
from testtime.svf.reinforce import (
    GenerationEnv,
    LoRAPolicy,
    ReinforceConfig,
    SVFPolicy,
    advantages,
    num_trainable,
    reinforce_loss,
    rewards_from_verdicts,
    train_step,
)
from testtime.svf.svf import SVF, SVFConfig
from testtime.tasks import get_task


def _grad_only(policy, env, rollouts, config, optimizer) -> float:
    """Seconds for log-probs + KL + backward + clip + Adam on fixed rollouts."""
    start = time.perf_counter()
    rewards = rewards_from_verdicts([r.solved for r in rollouts], [r.score for r in rollouts])
    adv = advantages(rewards)
    with policy.training() as model:
        current = env.policy_output(model, rollouts, normalize="sum", temperature=config.temperature)
        with torch.no_grad(), policy.reference():
            reference = env.policy_output(model, rollouts, normalize="sum", temperature=config.temperature)
        loss = reinforce_loss(
            current.seq_logp, adv, env.kl(current, reference, normalize="sum"), kl_coef=0.05
        )
        loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    task = get_task("arithmetic")
    instances = task.instances("train", seed=0, n=64, digits=2, terms=2)
    env = GenerationEnv(task, max_new_tokens=args.max_new_tokens)
    config = ReinforceConfig(batch_size=args.batch_size, kl_coef=0.05, temperature=1.0)

    svf_model, tokenizer = load_model()
    svf = SVF(svf_model, SVFConfig())
    lora_model, _ = load_model()
    policies = {
        "svf": SVFPolicy(svf, tokenizer, num_threads=args.threads),
        "lora": LoRAPolicy(
            lora_model, tokenizer, rank=16, targets=("q_proj", "v_proj"), num_threads=args.threads
        ),
    }
    optimizers = {
        "svf": torch.optim.Adam(policies["svf"].parameters(), lr=2e-3),
        "lora": torch.optim.Adam(policies["lora"].parameters(), lr=5e-4),
    }
    params = {name: num_trainable(p) for name, p in policies.items()}
    print(json.dumps({"trainable_parameters": params}), flush=True)

    steps: dict[str, list[float]] = {"svf": [], "lora": []}
    grads: dict[str, list[float]] = {"svf": [], "lora": []}
    merges: list[float] = []
    fixed = None
    for step in range(args.steps + 1):
        batch = instances[step * args.batch_size : (step + 1) * args.batch_size]
        order = ("svf", "lora") if step % 2 == 0 else ("lora", "svf")
        for name in order:
            policy = policies[name]
            metrics = train_step(policy, env, batch, config, optimizers[name], step)
            if fixed is None:
                policy.sync_for_sampling()
                fixed = env.rollouts(policy, batch, num_samples=1, temperature=1.0, seed=123)
            seconds = _grad_only(policy, env, fixed, config, optimizers[name])
            if name == "svf":  # the merge alone: W' = W + U diag(s (f - 1)) Vh for every target, engine told
                start = time.perf_counter()
                policy.sync_for_sampling()
                merge_seconds = time.perf_counter() - start
            if step > 0:  # the first step of each is a warm-up (packing, allocator)
                steps[name].append(metrics["seconds"])
                grads[name].append(seconds)
                if name == "svf":
                    merges.append(merge_seconds)
            print(json.dumps({"method": name, "step": step, "rl_step_s": round(metrics["seconds"], 2),
                              "grad_only_s": round(seconds, 2)}), flush=True)  # fmt: skip

    median = {k: statistics.median(v) for k, v in steps.items()}
    median_grad = {k: statistics.median(v) for k, v in grads.items()}
    result = {
        "param_ratio": round(params["lora"] / params["svf"], 2),
        "step_time_ratio": round(median["lora"] / median["svf"], 3),
        "grad_time_ratio": round(median_grad["lora"] / median_grad["svf"], 3),
        "svf_params": params["svf"],
        "lora_params": params["lora"],
        "svf_step_s": round(median["svf"], 2),
        "lora_step_s": round(median["lora"], 2),
        "svf_grad_s": round(median_grad["svf"], 2),
        "svf_merge_s": round(statistics.median(merges), 2),
        "lora_grad_s": round(median_grad["lora"], 2),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
