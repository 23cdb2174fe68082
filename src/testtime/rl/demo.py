"""Demo part: a few GRPO steps on the embedded model, with the reward moving.

A 135M instruct model asked for R1's ``<think>``/``<answer>`` format rarely produces it exactly, so the
strict format reward alone is almost always 0 and every group has zero variance: no learning signal. The
part therefore trains on a shaping reward that can move within a minute or two on two cores, the
tag-count reward (0.25 per R1 tag used exactly once), on a copy of the shared model (the tour's other parts
keep the original weights), and reports the strict format reward and the tag reward per step, an example
completion before and after, and a plot. What moves in this short run is *format*, not accuracy: that is
said in the section.
"""

from __future__ import annotations

import copy
import os
import time

import typer

from testtime.demo_base import DemoContext, DemoSection

# Shown to the model as the system prompt of every question (see testtime.rl.sft.R1_SYSTEM).
QUESTIONS = [
    "What is 12 + 7?",
    "What is 30 - 4?",
    "What is 6 * 3?",
    "What is 15 + 15?",
    "What is 9 + 10?",
    "What is 40 - 13?",
    "What is 5 * 5?",
    "What is 21 + 8?",
]


def run(ctx: DemoContext) -> DemoSection:
    """Train a copy of the demo model for a few GRPO steps on the tag-count reward; report the curve."""
    from testtime.llm.local import LocalLLM
    from testtime.rl.rewards import format_reward, tag_count_reward
    from testtime.rl.sft import R1_SYSTEM
    from testtime.rl.trainer import GRPOConfig, GRPOTrainer

    base, tokenizer = ctx.model_and_tokenizer()
    model = copy.deepcopy(base).float()
    steps = 1 if ctx.quick else 12
    config = GRPOConfig(
        num_generations=2 if ctx.quick else 8,
        prompts_per_step=1 if ctx.quick else 2,
        max_completion_length=8 if ctx.quick else 48,
        temperature=1.0,
        loss_type="dr_grpo",  # no length bias; a constant normalizer
        scale_rewards="group",
        learning_rate=2e-5,
        max_steps=steps,
        seed=ctx.seed,
        progress=not ctx.quick,
        save_policy=False,
        reward_weights=[1.0, 0.0],  # train on the tag reward; log the strict one
    )
    dataset = [
        {"prompt": [{"role": "system", "content": R1_SYSTEM}, {"role": "user", "content": q}]}
        for q in QUESTIONS
    ]
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 1)
    llm = LocalLLM(model, tokenizer, num_threads=1 if busy else None)
    tags, strict = tag_count_reward(), format_reward()
    out_dir = ctx.out_dir / "r1_grpo"
    trainer = GRPOTrainer(model, tokenizer, [tags, strict], dataset, config, out_dir=out_dir, llm=llm)
    probe = dataset[0]["prompt"]
    before = llm.generate([probe], temperature=0, max_tokens=config.max_completion_length)[0][0].text
    start = time.perf_counter()
    history = trainer.train(resume=False)
    seconds = time.perf_counter() - start
    after = llm.generate([probe], temperature=0, max_tokens=config.max_completion_length)[0][0].text
    tag_curve = [h["rewards/tag_count"] for h in history]
    strict_curve = [h["rewards/format_reward"] for h in history]
    typer.echo(
        f"GRPO: {len(history)} steps in {seconds:.0f} s; tag reward {tag_curve[0]:.2f} -> {tag_curve[-1]:.2f}"
    )

    figure = ctx.out_dir / "r1_grpo_reward.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(1, len(tag_curve) + 1), tag_curve, marker="o", label="tag-count reward (trained on)")
    ax.plot(range(1, len(strict_curve) + 1), strict_curve, marker="s", label="strict R1 format reward")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward of the step's samples")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(figure, dpi=120)
    plt.close(fig)

    def cell(text: str) -> str:
        text = " ".join(text.split())[:160]
        return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")

    half = max(1, len(tag_curve) // 3)
    first, last = sum(tag_curve[:half]) / half, sum(tag_curve[-half:]) / half
    rows = ["| step | tag-count reward | strict format | completion length |", "|---|---|---|---|"]
    for index, h in enumerate(history, 1):
        rows.append(
            f"| {index} | {h['rewards/tag_count']:.2f} | {h['rewards/format_reward']:.2f} | {h['completion_length']:.0f} |"
        )
    markdown = "\n".join(
        [
            f"GRPO on a copy of the model: {config.prompts_per_step} questions x {config.num_generations} samples "
            f"per step, at most {config.max_completion_length} tokens, {len(history)} steps in {seconds:.0f} s. "
            "The reward trained on is the tag-count shaping reward (0.25 per R1 tag used exactly once); the "
            "strict R1 format reward is logged beside it. What this short run can move is the *format* of the "
            "answers, not their correctness: no accuracy reward is used here, and a 135M model needs far "
            "longer runs for that (see experiments/r1_grpo_addition/).",
            "",
            f"Mean tag-count reward over the first third of the steps: {first:.2f}; over the last third: {last:.2f} "
            "(sampled at temperature 1; a few steps are noisy).",
            "",
            *rows,
            "",
            f"Greedy answer to {QUESTIONS[0]!r} before: {cell(before)}",
            "",
            f"after: {cell(after)}",
        ]
    )
    return DemoSection(title="DeepSeek-R1: GRPO with rule-based rewards", markdown=markdown, figures=[figure])
