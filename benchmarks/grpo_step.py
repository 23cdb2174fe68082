"""Wall time per GRPO step: testtime's GRPOTrainer against TRL's GRPOTrainer, same model, same run.

Both train the embedded SmolLM2-135M-Instruct (float32, bf16 off, CPU) on the same chat prompt, one prompt
with ``--group-size`` completions of at most ``--max-new-tokens`` tokens per optimizer step, temperature 1,
the ``grpo`` loss with beta 0 (no reference model), gradient checkpointing off on both sides (TRL's default is
on; ``--trl-gradient-checkpointing`` keeps it), the same reward function (R1's format reward plus a
length-free accuracy reward on a two-digit addition) and the same learning rate. A step is everything:
sampling the group, scoring it, the training forward and backward, and the optimizer step.

The two are measured in alternating blocks (ours, TRL, ours, TRL, ...) so that load from other processes
hits both alike; the first step of every block is a warm-up and not counted. Each block builds a fresh
trainer on a fresh copy of the model. Medians per step are reported with their ratio.

Usage::

    python benchmarks/grpo_step.py [--steps 3] [--rounds 2] [--group-size 8] [--max-new-tokens 32] [--threads 1]

The last line printed is one JSON object with ``speed_ratio`` (TRL seconds per step / ours).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import tempfile
import time
import warnings

import torch

PROMPT = [
    {
        "role": "user",
        "content": "What is 23 + 45? Think inside <think> </think>, answer inside <answer> </answer>.",
    }
]


def reward_format(prompts, completions, **_):
    from testtime.rl.rewards import format_ok
    from testtime.tasks.base import completion_text

    return [1.0 if format_ok(completion_text(c)) else 0.0 for c in completions]


def reward_answer(prompts, completions, **_):
    from testtime.rl.rewards import answer_text
    from testtime.tasks.base import completion_text

    return [1.0 if "68" in answer_text(completion_text(c)) else 0.0 for c in completions]


def ours_block(base, tokenizer, *, steps: int, group: int, max_new: int, threads: int) -> list[float]:
    from testtime.llm.local import LocalLLM
    from testtime.rl.trainer import GRPOConfig, GRPOTrainer

    model = copy.deepcopy(base)
    config = GRPOConfig(
        num_generations=group,
        prompts_per_step=1,
        max_completion_length=max_new,
        temperature=1.0,
        loss_type="grpo",
        beta=0.0,
        learning_rate=1e-6,
        max_steps=steps + 1,
        progress=False,
        save_policy=False,
    )
    llm = LocalLLM(model, tokenizer, num_threads=threads)
    with tempfile.TemporaryDirectory() as out:
        trainer = GRPOTrainer(
            model,
            tokenizer,
            [reward_format, reward_answer],
            [{"prompt": PROMPT}],
            config,
            out_dir=out,
            llm=llm,
        )
        times = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            trainer.step()
            times.append(time.perf_counter() - start)
    llm.close()
    del trainer, llm, model
    gc.collect()  # each block builds a fresh trainer on a fresh copy: free the last one first
    return times[1:]


def trl_block(
    base, tokenizer, *, steps: int, group: int, max_new: int, gradient_checkpointing: bool = False
) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    model = copy.deepcopy(base)
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not stamps:
                stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=group,
            num_generations=group,
            max_completion_length=max_new,
            temperature=1.0,
            loss_type="grpo",
            beta=0.0,
            learning_rate=1e-6,
            max_steps=steps + 1,
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            bf16=False,
            use_cpu=True,
            # TRL's GRPOConfig turns gradient checkpointing on by default (it recomputes the forward in the
            # backward); ours keeps the activations, so like for like is off unless asked for.
            gradient_checkpointing=gradient_checkpointing,
            disable_tqdm=True,
            seed=0,
        )
        data = Dataset.from_list([{"prompt": PROMPT}] * (steps + 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = GRPOTrainer(
                model=model,
                reward_funcs=[reward_format, reward_answer],
                args=args,
                train_dataset=data,
                processing_class=tokenizer,
                callbacks=[Stamp()],
            )
            trainer.train()
    del trainer, model
    gc.collect()
    times = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per block (plus one warm-up).")
    parser.add_argument("--rounds", type=int, default=2, help="Alternating blocks of each.")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--trl-gradient-checkpointing",
        action="store_true",
        help="TRL with its default gradient checkpointing (recomputes the forward; ours does not).",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from testtime.llm.loading import load_model

    base, tokenizer = load_model()
    base = base.float()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ours: list[float] = []
    theirs: list[float] = []
    for round_ in range(args.rounds):
        block = ours_block(
            base,
            tokenizer,
            steps=args.steps,
            group=args.group_size,
            max_new=args.max_new_tokens,
            threads=args.threads,
        )
        ours += block
        print(f"round {round_}: ours {[round(t, 2) for t in block]} s/step", flush=True)
        block = trl_block(
            base,
            tokenizer,
            steps=args.steps,
            group=args.group_size,
            max_new=args.max_new_tokens,
            gradient_checkpointing=args.trl_gradient_checkpointing,
        )
        theirs += block
        print(f"round {round_}: trl  {[round(t, 2) for t in block]} s/step", flush=True)
    ours_median, trl_median = statistics.median(ours), statistics.median(theirs)
    result = {
        "ours_s_per_step": round(ours_median, 3),
        "trl_s_per_step": round(trl_median, 3),
        "speed_ratio": round(trl_median / ours_median, 2),
        "ours_steps": [round(t, 3) for t in ours],
        "trl_steps": [round(t, 3) for t in theirs],
        "group_size": args.group_size,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "trl_gradient_checkpointing": args.trl_gradient_checkpointing,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "trl": __import__("trl").__version__,
        "machine": platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
