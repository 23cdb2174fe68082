"""Accuracy of the engine's weight-only int8 / int4 products on the embedded SmolLM2, against float32.

The float32 model is the GGUF file's weights expanded (its layers are Q4_1, its embedding / tied LM head
Q8_0), so float32 here is "the GGUF model without rounding of activations". For each weight format of the
engine (bfloat16, int8, int4) this measures, on the same inputs:

- **perplexity** of a held-out Shakespeare passage (teacher-forced, one forward per window);
- **greedy agreement**: chat prompts decoded greedily for ``--tokens`` tokens; the share of rows identical
  to float32's, and the mean index of the first differing token;
- **log-prob gap** on float32's greedy completions: ``|log p_format - log p_fp32|`` per token (mean, median,
  p95, max), the quantity RL importance ratios would see.

What it can show: how far each format moves this one 135M model's outputs. What it cannot: quality on
downstream tasks, other models (larger models usually lose less to int4), or GPUs (the int kernels here
are the CPU ones).

Usage::

    python experiments/llm_quant/run.py [--prompts 32] [--tokens 48] [--seeds 0 1 2]

Seeds pick which Shakespeare windows are scored (``--windows`` each). Every format scores the same windows,
so the perplexity change against float32 is paired per seed: its mean and standard deviation over seeds
are reported (the perplexities themselves vary far more between windows than between formats).
The last line is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from generate import QUESTIONS  # noqa: E402  (the generate benchmark's chat prompts)


def _text() -> str:
    root = Path(__file__).resolve().parents[2] / "src" / "testtime" / "data" / "tinyshakespeare"
    return (root / "input.txt").read_text(encoding="utf-8")


def _perplexity(engine, tokens: list[int], starts: list[int], window: int) -> float:
    """exp(mean NLL) over the windows (the first token of each is context only)."""
    total, count = 0.0, 0
    for start in starts:
        piece = tokens[start : start + window]
        scores = engine.score([piece[:1]], [piece[1:]])[0]
        total -= sum(scores)
        count += len(scores)
    return math.exp(total / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--windows", type=int, default=8, help="Shakespeare windows per seed")
    parser.add_argument("--window", type=int, default=256, help="tokens per window")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    from testtime.llm.engine import Engine
    from testtime.llm.loading import load_model

    model32, tokenizer = load_model(None)
    model16, _ = load_model(None, dtype=torch.bfloat16)
    engines = {
        "fp32": Engine(model32),
        "bf16": Engine(model16),
        "int8": Engine(model16, quantize="int8"),
        "int4": Engine(model16, quantize="int4"),
    }
    eos = [tokenizer.eos_token_id]
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS[: args.prompts]]
    prompts = [
        list(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False))
        for c in chats
    ]
    greedy = {
        name: engine.generate(prompts, max_new_tokens=args.tokens, stop_token_ids=eos).tokens
        for name, engine in engines.items()
    }
    reference = greedy["fp32"]
    ref_scores = engines["fp32"].score(prompts, reference)
    tokens = tokenizer(_text())["input_ids"]
    held_out = tokens[len(tokens) * 9 // 10 :]  # the last tenth
    summary: dict[str, dict[str, float]] = {}
    base: list[float] = []
    print(
        f"{'format':>6} {'perplexity (per seed)':>30} {'vs fp32 %':>13} {'rows = fp32':>12} {'first diff':>10} "
        f"{'|dlogp| mean':>12} {'median':>8} {'p95':>7} {'max':>7}"
    )
    for name, engine in engines.items():
        perplexities = []
        for seed in args.seeds:
            rng = random.Random(seed)
            starts = [rng.randrange(0, len(held_out) - args.window) for _ in range(args.windows)]
            perplexities.append(_perplexity(engine, held_out, starts, args.window))
        if name == "fp32":
            base = perplexities
        change = [100 * (p / b - 1) for p, b in zip(perplexities, base, strict=True)]
        same = sum(a == b for a, b in zip(greedy[name], reference, strict=True)) / len(reference)
        firsts = []
        for a, b in zip(greedy[name], reference, strict=True):
            diff = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
            firsts.append(min(len(a), len(b)) if diff is None else diff)
        scores = engine.score(prompts, reference)
        gaps = sorted(
            abs(x - y)
            for row, ref in zip(scores, ref_scores, strict=True)
            for x, y in zip(row, ref, strict=True)
        )
        p95 = gaps[int(0.95 * (len(gaps) - 1))]
        summary[name] = {
            "perplexity_mean": round(statistics.mean(perplexities), 4),
            "perplexity_sd": round(statistics.stdev(perplexities), 4) if len(perplexities) > 1 else 0.0,
            "perplexity_change_pct_mean": round(statistics.mean(change), 3),
            "perplexity_change_pct_sd": round(statistics.stdev(change), 3) if len(change) > 1 else 0.0,
            "greedy_rows_equal_fp32": round(same, 3),
            "first_difference_mean": round(statistics.mean(firsts), 2),
            "logprob_gap_mean": round(statistics.mean(gaps), 4),
            "logprob_gap_median": round(statistics.median(gaps), 4),
            "logprob_gap_p95": round(p95, 4),
            "logprob_gap_max": round(gaps[-1], 4),
        }
        s = summary[name]
        per_seed = " ".join(f"{p:.3f}" for p in perplexities)
        print(
            f"{name:>6} {per_seed:>30} "
            f"{s['perplexity_change_pct_mean']:>+6.2f}±{s['perplexity_change_pct_sd']:<5.2f} {same:>12.2f} {s['first_difference_mean']:>10.1f} "
            f"{s['logprob_gap_mean']:>12.4f} {s['logprob_gap_median']:>8.4f} {p95:>7.4f} {gaps[-1]:>7.4f}",
            flush=True,
        )
    print(json.dumps({"scored_tokens": sum(len(r) for r in reference), **summary}))


if __name__ == "__main__":
    main()
