"""Experiment (b): GRPO on the embedded SmolLM2-135M-Instruct for two-digit addition, held-out accuracy.

R1's claim at miniature scale: reinforcement learning with a rule-based, binary accuracy reward raises a
model's accuracy on problems it did not train on, starting from a model whose accuracy is above zero.
The base model answers a few two-digit additions in 32 correctly, so groups of 8 samples often contain a
correct answer and GRPO has signal.

Data: additions ``a + b`` with a, b in 10..99, asked with the arithmetic task's prompt ("Work step by step,
then end with 'The answer is N.'") and checked by its verifier. Train and test problems are disjoint by
content (a pair goes to test when ``(a * 100 + b) % 5 == 0``). Training: GRPO (loss ``grpo``, beta 0,
binary accuracy reward, G = 8, 2 prompts per step, temperature 1, at most 48 new tokens, AdamW lr 1e-5).
Evaluation: greedy pass@1 on the same 100 held-out problems before and after, per seed, with 95 % Wilson
intervals. Writes experiments/r1_grpo_addition/{results.md, results.json, curves.png}.

Honest scale: tens of GRPO steps on two shared CPU cores, against R1's thousands of steps on a 671B model.
What it can show: whether the reward and the held-out accuracy move for this model and budget. What it
cannot show: long-chain-of-thought emergence, response-length growth, or anything about larger models.

With ``--prompt-style short`` the question asks for the number alone (greedy base accuracy about 0.3
instead of 0.03, and 12 new tokens suffice); the measured run and its reading are in
experiments/r1_grpo_addition/README.md.

Usage: python experiments/r1_grpo_addition.py [--steps 20] [--seeds 0 1] [--test 100] [--threads 1]
    [--prompt-style task|short] [--temperature 1.0] [--max-new-tokens 48] [--eval-tokens 64]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import statistics
import time
from pathlib import Path

import torch

OUT = Path(__file__).parent / "r1_grpo_addition"


def additions(split: str, count: int, seed: int) -> list:
    """``count`` distinct additions of the split (content-disjoint train/test)."""
    from testtime.tasks.base import Instance

    rng = random.Random(f"addition-{split}-{seed}")
    seen, out = set(), []
    while len(out) < count:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        in_test = (a * 100 + b) % 5 == 0
        if (split == "test") != in_test or (a, b) in seen:
            continue
        seen.add((a, b))
        out.append(
            Instance(
                task="arithmetic", id=f"{split}-{a}+{b}", data={"expression": f"{a} + {b}", "answer": a + b}
            )
        )
    return out


def make_prompt(task, instance, style: str):
    """``task``: the arithmetic task's own prompt (work step by step, end with 'The answer is N.');
    ``short``: ask for the number alone (the base model answers more of these greedily, and 12 tokens do)."""
    from testtime.rl.sft import prompt_for

    if style == "short":
        expression = instance.data["expression"]
        return [{"role": "user", "content": f"What is {expression}? Reply with just the number."}]
    return prompt_for(task, instance, "chat")


def greedy_accuracy(llm, task, instances, max_tokens: int, style: str = "task") -> tuple[int, list[str]]:
    prompts = [make_prompt(task, i, style) for i in instances]
    out = llm.generate(prompts, temperature=0, max_tokens=max_tokens)
    texts = [choices[0].text for choices in out]
    return sum(task.verify(i, t).solved for i, t in zip(instances, texts, strict=True)), texts


def main() -> None:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--eval-tokens", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt-style", choices=["task", "short"], default="task")
    parser.add_argument("--temperature", type=float, default=1.0, help="GRPO sampling temperature.")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    OUT = args.out
    torch.set_num_threads(args.threads)

    from testtime.llm.loading import load_model
    from testtime.llm.local import LocalLLM
    from testtime.rl.eval import wilson_interval
    from testtime.rl.rewards import accuracy_reward
    from testtime.rl.trainer import GRPOConfig, GRPOTrainer
    from testtime.tasks.base import get_task

    OUT.mkdir(parents=True, exist_ok=True)
    task = get_task("arithmetic")
    base, tokenizer = load_model()
    base = base.float()
    test = additions("test", args.test, 0)
    base_llm = LocalLLM(base, tokenizer, num_threads=args.threads)
    start = time.perf_counter()
    base_hits, _ = greedy_accuracy(base_llm, task, test, args.eval_tokens, args.prompt_style)
    base_llm.close()
    print(f"base: {base_hits}/{len(test)} held-out ({time.perf_counter() - start:.0f} s)", flush=True)
    results = {
        "config": {**vars(args), "out": str(args.out)},
        "base": {"hits": base_hits, "n": len(test), "ci": wilson_interval(base_hits, len(test))},
        "runs": [],
        "load_average_start": os.getloadavg(),
    }
    for seed in args.seeds:
        model = copy.deepcopy(base)
        llm = LocalLLM(model, tokenizer, num_threads=args.threads)
        train = additions("train", args.train, seed)
        dataset = [
            {"prompt": make_prompt(task, i, args.prompt_style), "instance": i.to_dict()} for i in train
        ]
        config = GRPOConfig(
            num_generations=args.group,
            prompts_per_step=args.prompts_per_step,
            max_completion_length=args.max_new_tokens,
            temperature=args.temperature,
            loss_type="grpo",
            beta=0.0,
            learning_rate=args.lr,
            max_steps=args.steps,
            seed=seed,
            save_policy=False,
            progress=True,
        )
        trainer = GRPOTrainer(
            model,
            tokenizer,
            [accuracy_reward(task)],
            dataset,
            config,
            out_dir=OUT / f"run_seed{seed}",
            llm=llm,
        )
        start = time.perf_counter()
        history = trainer.train(resume=False)
        train_seconds = time.perf_counter() - start
        hits, texts = greedy_accuracy(llm, task, test, args.eval_tokens, args.prompt_style)
        llm.close()
        shutil.rmtree(OUT / f"run_seed{seed}" / "checkpoints", ignore_errors=True)  # 135M weights: not kept
        run = {
            "seed": seed,
            "hits": hits,
            "n": len(test),
            "ci": wilson_interval(hits, len(test)),
            "train_reward": [h["reward"] for h in history],
            "completion_length": [h["completion_length"] for h in history],
            "zero_std_share": [h["zero_std_share"] for h in history],
            "train_seconds": train_seconds,
            "examples": [
                {"problem": i.data["expression"], "answer": t}
                for i, t in zip(test[:3], texts[:3], strict=True)
            ],
        }
        results["runs"].append(run)
        print(
            f"seed {seed}: {hits}/{len(test)} held-out after {args.steps} steps ({train_seconds:.0f} s)",
            flush=True,
        )
        (OUT / "results.json").write_text(json.dumps(results, indent=1))
    results["load_average_end"] = os.getloadavg()
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results)


def write_report(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from testtime.rl.eval import wilson_interval

    base = results["base"]
    runs = results["runs"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for run in runs:
        rewards = run["train_reward"]
        window = 5
        smooth = [statistics.mean(rewards[max(0, i - window + 1) : i + 1]) for i in range(len(rewards))]
        left.plot(range(1, len(rewards) + 1), rewards, alpha=0.3)
        left.plot(range(1, len(rewards) + 1), smooth, label=f"seed {run['seed']} (5-step mean)")
    left.set_xlabel("GRPO step")
    left.set_ylabel("train reward (accuracy of samples)")
    left.legend(fontsize=8)
    names = ["base"] + [f"GRPO seed {r['seed']}" for r in runs]
    values = [base["hits"] / base["n"]] + [r["hits"] / r["n"] for r in runs]
    cis = [base["ci"]] + [r["ci"] for r in runs]
    errors = [
        [v - c[0] for v, c in zip(values, cis, strict=True)],
        [c[1] - v for v, c in zip(values, cis, strict=True)],
    ]
    right.bar(names, values, yerr=errors, capsize=4, color=["#999"] + ["#3a7"] * len(runs))
    right.set_ylabel("held-out greedy pass@1")
    right.set_title(f"{base['n']} held-out additions, 95% Wilson")
    fig.tight_layout()
    fig.savefig(OUT / "curves.png", dpi=120)
    plt.close(fig)

    pooled_hits = sum(r["hits"] for r in runs)
    pooled_n = sum(r["n"] for r in runs)
    lines = [
        "# Experiment (b): GRPO on SmolLM2-135M-Instruct, two-digit addition",
        "",
        "Written by `experiments/r1_grpo_addition.py` (see its docstring for the setup).",
        f"Config: `{json.dumps(results['config'])}`. Load average at start {results['load_average_start'][0]:.1f}"
        f" on {os.cpu_count()} cores.",
        "",
        "| model | held-out greedy pass@1 | 95% Wilson | train reward, first 5 steps | last 5 steps | train seconds |",
        "|---|---|---|---|---|---|",
        f"| base | {base['hits']}/{base['n']} = {base['hits'] / base['n']:.2f} | {base['ci'][0]:.2f}-{base['ci'][1]:.2f} | | | |",
    ]
    for r in runs:
        first = statistics.mean(r["train_reward"][:5])
        last = statistics.mean(r["train_reward"][-5:])
        lines.append(
            f"| GRPO seed {r['seed']} | {r['hits']}/{r['n']} = {r['hits'] / r['n']:.2f} | {r['ci'][0]:.2f}-{r['ci'][1]:.2f} "
            f"| {first:.2f} | {last:.2f} | {r['train_seconds']:.0f} |"
        )
    if runs:
        ci = wilson_interval(pooled_hits, pooled_n)
        lines.append(
            f"| GRPO, seeds pooled | {pooled_hits}/{pooled_n} = {pooled_hits / pooled_n:.2f} | {ci[0]:.2f}-{ci[1]:.2f} | | | |"
        )
    lines += ["", "![curves](curves.png)", ""]
    (OUT / "results.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
