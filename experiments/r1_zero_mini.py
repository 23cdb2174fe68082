"""Experiments (a) and (c) in miniature: RL after a narrow cold start, against compute-matched baselines;
then distillation of the RL-trained model into a smaller student against RL on the student directly.

(a) R1-Zero / R1 in miniature. A tiny Llama (random init, character tokens) is cold-started by SFT on a
*narrow* distribution: two-digit additions ``a+b=`` whose digit sums never carry. The *target* distribution
is all two-digit additions (most carry). From the same cold-start checkpoint, three arms spend the same
budget, ``steps`` optimizer steps on ``steps x P x G`` sampled or given completions:

- **GRPO**: binary accuracy reward, G samples per prompt, loss ``grpo``, temperature 1 (this package's
  trainer), learning rate ``--rl-lr`` (default 1e-4; 1e-3 degraded the policy, see README.md).
- **RS-SFT** (rejection sampling, expert iteration): the same number of samples from the cold-start
  model on target problems, the verified ones kept, SFT on them with the same number of steps.
- **SFT on gold answers** of the target distribution (same steps and rows): uses labels, which RL does not;
  a ceiling, not a peer.

(c) R1's Table 6 in miniature: the GRPO-trained model of (a) is the teacher; a smaller student (half the
width) is cold-started the same way and then either **distilled** (SFT on the teacher's verified samples on
target problems) or trained by **GRPO directly** with the same number of steps.

Evaluation: greedy exact-match accuracy on held-out target additions (pairs never used in training), 95 %
Wilson intervals, several seeds, split into carry and no-carry problems. Writes
``--out``/{results.md, results.json, plot.png} (default experiments/r1_zero_mini/); results and their
reading: experiments/r1_zero_mini/README.md.

Honest scale: ~10^5-parameter models, character tokens, answers of 2-3 tokens, no chain of thought. What it
can show: whether the trainer's RL improves a narrow-start policy on a shifted distribution compared with
rejection-sampling SFT at equal sample budget, and whether distilling an RL-trained teacher beats RL on a
smaller student. What it cannot show: emergent long reasoning, the "aha moment", or any effect of scale.

Usage: python experiments/r1_zero_mini.py [--seeds 0 1 2] [--steps 60] [--cold-steps 400]
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

OUT = Path(__file__).parent / "r1_zero_mini"


def pairs(kind: str, count: int, rng: random.Random, exclude: set) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    tries = 0
    while len(out) < count and tries < 100_000:
        tries += 1
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if kind == "narrow" and carries(a, b):
            continue
        if (a, b) in exclude:
            continue
        out.append((a, b))
    return out


def make_model(tokenizer, *, hidden: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def carries(a: int, b: int) -> bool:
    return (a % 10 + b % 10) >= 10 or (a // 10 + b // 10) >= 10


def solved(model, tokenizer, problems) -> list[bool]:
    from testtime.llm.local import LocalLLM

    llm = LocalLLM(model.eval(), tokenizer)
    out = llm.generate([f"{a}+{b}=" for a, b in problems], temperature=0, max_tokens=4)
    llm.close()
    return [c[0].text.strip() == str(a + b) for (a, b), c in zip(problems, out, strict=True)]


def accuracy(model, tokenizer, problems) -> int:
    return sum(solved(model, tokenizer, problems))


def reward(prompts, completions, **_):
    out = []
    for prompt, completion in zip(prompts, completions, strict=True):
        a, b = prompt[:-1].split("+")
        out.append(1.0 if completion.strip() == str(int(a) + int(b)) else 0.0)
    return out


def sft(model, tokenizer, rows, *, steps: int, batch: int, lr: float, seed: int):
    from testtime.rl.sft import SFTConfig, sft_train

    return sft_train(
        model,
        tokenizer,
        rows,
        SFTConfig(learning_rate=lr, batch_size=batch, max_steps=steps, seed=seed, progress=False),
    )


def grpo(
    model, tokenizer, problems, *, steps: int, prompts: int, group: int, lr: float, seed: int, out: Path
):
    from testtime.llm.local import LocalLLM
    from testtime.rl.trainer import GRPOConfig, GRPOTrainer

    config = GRPOConfig(
        num_generations=group,
        prompts_per_step=prompts,
        max_completion_length=4,
        temperature=1.0,
        loss_type="grpo",
        learning_rate=lr,
        max_steps=steps,
        seed=seed,
        progress=False,
        save_policy=False,
    )
    llm = LocalLLM(model, tokenizer, max_batch_size=prompts * group)
    trainer = GRPOTrainer(
        model,
        tokenizer,
        [reward],
        [{"prompt": f"{a}+{b}="} for a, b in problems],
        config,
        out_dir=out,
        llm=llm,
    )
    history = trainer.train(resume=False)
    llm.close()
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return history


def rejection_rows(model, tokenizer, problems, *, samples: int, seed: int) -> tuple[list[dict], int]:
    from testtime.llm.local import LocalLLM
    from testtime.llm.protocol import SamplingParams

    llm = LocalLLM(model.eval(), tokenizer)
    out = llm.generate(
        [f"{a}+{b}=" for a, b in problems],
        SamplingParams(n=samples, temperature=1.0, max_tokens=4, seed=seed),
    )
    llm.close()
    rows = []
    for (a, b), choices in zip(problems, out, strict=True):
        for c in choices:
            if c.text.strip() == str(a + b):
                rows.append({"prompt": f"{a}+{b}=", "completion": c.text.strip()})
    return rows, len(problems) * samples


def main() -> None:
    global OUT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cold-steps", type=int, default=400)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--student-hidden", type=int, default=32)
    parser.add_argument("--test", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--rl-lr", type=float, default=1e-4, help="GRPO learning rate (1e-3 degraded, see README)"
    )
    parser.add_argument("--sft-lr", type=float, default=1e-3, help="Learning rate of the SFT arms.")
    parser.add_argument("--out", type=Path, default=OUT, help="Folder for results.{md,json} and plot.png.")
    parser.add_argument("--report-only", action="store_true", help="Rewrite results.md from results.json.")
    args = parser.parse_args()
    OUT = args.out
    if args.report_only:
        report(json.loads((OUT / "results.json").read_text()))
        return
    torch.set_num_threads(args.threads)
    from testtime.rl.eval import wilson_interval
    from testtime.testing import build_tiny_tokenizer

    OUT.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    budget_rows = args.steps * args.prompts * args.group  # completions each arm may use
    results = {
        "config": {**vars(args), "out": str(args.out)},
        "seeds": [],
        "load_average_start": os.getloadavg(),
    }
    for seed in args.seeds:
        rng = random.Random(seed)
        test = pairs("target", args.test, random.Random(10_000 + seed), set())
        held = set(test)
        narrow = pairs("narrow", 2000, rng, held)
        target_train = pairs("target", 2000, rng, held)
        cold_rows = [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a, b in narrow]
        record: dict = {"seed": seed}

        def evaluate(name, model, record=record, test=test, seed=seed):
            marks = solved(model, tokenizer, test)
            hits = sum(marks)
            carry_marks = [m for m, (a, b) in zip(marks, test, strict=True) if carries(a, b)]
            record[name] = {
                "hits": hits,
                "n": len(test),
                "ci": wilson_interval(hits, len(test)),
                "carry_hits": sum(carry_marks),
                "carry_n": len(carry_marks),
            }
            print(
                f"seed {seed} {name}: {hits}/{len(test)} (carry {sum(carry_marks)}/{len(carry_marks)})",
                flush=True,
            )

        start = time.perf_counter()
        teacher0 = make_model(tokenizer, hidden=args.hidden, seed=seed)
        sft(teacher0, tokenizer, cold_rows, steps=args.cold_steps, batch=64, lr=3e-3, seed=seed)
        evaluate("cold_start", teacher0)
        narrow_test = pairs("narrow", 200, random.Random(20_000 + seed), set(narrow))
        record["cold_start_narrow_acc"] = accuracy(teacher0, tokenizer, narrow_test) / len(narrow_test)

        # (a) three arms from the same cold start
        rl_model = copy.deepcopy(teacher0)
        history = grpo(
            rl_model,
            tokenizer,
            target_train,
            steps=args.steps,
            prompts=args.prompts,
            group=args.group,
            lr=args.rl_lr,
            seed=seed,
            out=OUT / f"grpo_seed{seed}",
        )
        record["grpo_reward"] = [h["reward"] for h in history]
        record["grpo_zero_std_share"] = [h["zero_std_share"] for h in history]
        evaluate("grpo", rl_model)

        rs_model = copy.deepcopy(teacher0)
        per_problem = args.group
        problems = target_train[: budget_rows // per_problem]
        rows, sampled = rejection_rows(teacher0, tokenizer, problems, samples=per_problem, seed=seed)
        record["rs_kept"] = len(rows)
        record["rs_sampled"] = sampled
        if rows:
            sft(
                rs_model,
                tokenizer,
                rows,
                steps=args.steps,
                batch=args.prompts * args.group,
                lr=args.sft_lr,
                seed=seed,
            )
        evaluate("rs_sft", rs_model)

        gold_model = copy.deepcopy(teacher0)
        gold_rows = [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a, b in target_train]
        sft(
            gold_model,
            tokenizer,
            gold_rows,
            steps=args.steps,
            batch=args.prompts * args.group,
            lr=args.sft_lr,
            seed=seed,
        )
        evaluate("sft_gold", gold_model)

        # (c) distillation into a smaller student vs GRPO on the student
        student0 = make_model(tokenizer, hidden=args.student_hidden, seed=seed + 100)
        sft(student0, tokenizer, cold_rows, steps=args.cold_steps, batch=64, lr=3e-3, seed=seed)
        evaluate("student_cold_start", student0)
        distilled = copy.deepcopy(student0)
        rows, _ = rejection_rows(rl_model, tokenizer, problems, samples=per_problem, seed=seed + 1)
        record["distill_rows"] = len(rows)
        if rows:
            sft(
                distilled,
                tokenizer,
                rows,
                steps=args.steps,
                batch=args.prompts * args.group,
                lr=args.sft_lr,
                seed=seed,
            )
        evaluate("student_distilled", distilled)
        student_rl = copy.deepcopy(student0)
        grpo(
            student_rl,
            tokenizer,
            target_train,
            steps=args.steps,
            prompts=args.prompts,
            group=args.group,
            lr=args.rl_lr,
            seed=seed,
            out=OUT / f"student_grpo_seed{seed}",
        )
        evaluate("student_grpo", student_rl)
        record["seconds"] = time.perf_counter() - start
        results["seeds"].append(record)
        (OUT / "results.json").write_text(json.dumps(results, indent=1))
    results["load_average_end"] = os.getloadavg()
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    report(results)


ARMS_A = [
    ("cold_start", "cold start (narrow SFT)"),
    ("grpo", "GRPO"),
    ("rs_sft", "rejection-sampling SFT"),
    ("sft_gold", "SFT on gold answers (uses labels)"),
]
ARMS_C = [
    ("student_cold_start", "student cold start"),
    ("student_grpo", "student + GRPO"),
    ("student_distilled", "student distilled from the GRPO teacher"),
]


def report(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from testtime.rl.eval import wilson_interval

    seeds = results["seeds"]
    cfg = results["config"]

    def row(key, label):
        accs = [s[key]["hits"] / s[key]["n"] for s in seeds]
        hits, n = sum(s[key]["hits"] for s in seeds), sum(s[key]["n"] for s in seeds)
        lo, hi = wilson_interval(hits, n)
        per = ", ".join(f"{a:.3f}" for a in accs)
        spread = (
            f"{statistics.mean(accs):.3f} ± {statistics.stdev(accs):.3f}"
            if len(accs) > 1
            else f"{accs[0]:.3f}"
        )
        carry = f"{sum(s[key]['carry_hits'] for s in seeds)}/{sum(s[key]['carry_n'] for s in seeds)}"
        easy = sum(s[key]["hits"] - s[key]["carry_hits"] for s in seeds)
        easy_n = sum(s[key]["n"] - s[key]["carry_n"] for s in seeds)
        e_lo, e_hi = wilson_interval(easy, easy_n)
        no_carry = f"{easy}/{easy_n} = {easy / easy_n:.3f} ({e_lo:.3f}-{e_hi:.3f})"
        return f"| {label} | {per} | {spread} | {lo:.3f}-{hi:.3f} | {carry} | {no_carry} |", statistics.mean(
            accs
        )

    lines = [
        "# Experiments (a) and (c) in miniature: RL after a narrow cold start; distillation vs RL on a student",
        "",
        "Written by `experiments/r1_zero_mini.py` (setup in its docstring). Config: "
        f"`{json.dumps(cfg)}`. Budget per arm: {cfg['steps']} optimizer steps on "
        f"{cfg['steps'] * cfg['prompts'] * cfg['group']} sampled (or given) completions. Load average at start "
        f"{results['load_average_start'][0]:.1f} on {os.cpu_count()} cores.",
        "",
        f"Held-out target additions: greedy exact match, {seeds[0]['cold_start']['n']} problems per seed, seeds "
        f"{[s['seed'] for s in seeds]}.",
        "",
        "## (a) From a narrow cold start (no-carry additions) to all two-digit additions",
        "",
        "| arm | accuracy per seed | mean ± sd over seeds | 95% Wilson (seeds pooled) | carry problems solved "
        "| no-carry problems solved (95% Wilson) |",
        "|---|---|---|---|---|---|",
    ]
    means_a = []
    for key, label in ARMS_A:
        text, mean = row(key, label)
        lines.append(text)
        means_a.append(mean)
    lines += [
        "",
        "Rejection sampling kept "
        + ", ".join(f"{s['rs_kept']}/{s['rs_sampled']}" for s in seeds)
        + " samples (per seed); cold-start accuracy on held-out *narrow* problems: "
        + ", ".join(f"{s['cold_start_narrow_acc']:.2f}" for s in seeds)
        + ". GRPO: mean train reward first/last 10 steps "
        + ", ".join(
            f"{statistics.mean(s['grpo_reward'][:10]):.2f}/{statistics.mean(s['grpo_reward'][-10:]):.2f}"
            for s in seeds
        )
        + "; share of groups with zero reward variance (no signal) "
        + ", ".join(f"{statistics.mean(s['grpo_zero_std_share']):.2f}" for s in seeds)
        + ".",
        "",
        "## (c) Distillation of the GRPO model into a half-width student vs GRPO on the student",
        "",
        "| arm | accuracy per seed | mean ± sd over seeds | 95% Wilson (seeds pooled) | carry problems solved "
        "| no-carry problems solved (95% Wilson) |",
        "|---|---|---|---|---|---|",
    ]
    means_c = []
    for key, label in ARMS_C:
        text, mean = row(key, label)
        lines.append(text)
        means_c.append(mean)
    lines += ["", "![accuracy](plot.png)", ""]
    (OUT / "results.md").write_text("\n".join(lines))

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.bar([label.split(" (")[0] for _, label in ARMS_A], means_a, color=["#999", "#3a7", "#48c", "#c84"])
    for i, (key, _) in enumerate(ARMS_A):
        left.scatter(
            [i] * len(seeds), [s[key]["hits"] / s[key]["n"] for s in seeds], color="k", s=10, zorder=3
        )
    left.set_ylabel("held-out accuracy")
    left.set_title("(a) narrow cold start -> target")
    left.tick_params(axis="x", labelsize=7)
    right.bar(["cold start", "GRPO", "distilled"], means_c, color=["#999", "#3a7", "#a5c"])
    for i, (key, _) in enumerate(ARMS_C):
        right.scatter(
            [i] * len(seeds), [s[key]["hits"] / s[key]["n"] for s in seeds], color="k", s=10, zorder=3
        )
    right.set_title("(c) half-width student")
    fig.tight_layout()
    fig.savefig(OUT / "plot.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
