"""Tokens/s of the testtime engine against ``transformers.generate`` on the embedded model, same run.

Both decode greedily the same chat prompts (left-padded batches for ``generate``), stopping each row at
its end-of-sequence token; a run's tokens are the tokens generated up to and including it. The two are
measured interleaved (generate, engine, generate, engine, ...) so that load from other processes hits
both alike, and the medians and their ratio are reported. Greedy outputs are compared token by token.

Usage::

    python benchmarks/generate.py [--batch-sizes 1 8 32] [--max-new-tokens 64] [--repeats 3]

The last line printed is one JSON object with ``ratio_batch8`` (engine / generate aggregate tokens/s at
batch 8) and the other measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from testtime.llm.reference import hf_generate_greedy

QUESTIONS = [  # batch b takes the first b; the first has a long answer so that batch 1 measures decoding
    "Explain gravity to a child in two sentences.",
    "Give one reason the sky looks blue.",
    "Write a haiku about test-time compute.",
    "What is 12 + 30?",
    "Name three fruits that are red.",
    "What is the capital of France?",
    "What is a prime number?",
    "Tell me a short joke about computers.",
    "How many legs does a spider have?",
    "Why do leaves change colour in autumn?",
    "What does a compiler do?",
    "Describe the water cycle briefly.",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "Suggest a name for a pet turtle.",
    "What is the difference between weather and climate?",
    "List two uses of a paperclip.",
    "What is photosynthesis?",
    "Translate 'good morning' into Spanish.",
    "What is the largest planet in the solar system?",
    "Give me a tip for learning to code.",
    "What is 7 times 8?",
    "Why is exercise healthy?",
    "What is an atom made of?",
    "Write one sentence about the ocean.",
    "What do bees make?",
    "How does a rainbow form?",
    "Name a famous painting.",
    "What is the square root of 81?",
    "What is the main ingredient of bread?",
    "Why do we have seasons?",
    "What language is spoken in Brazil?",
]


def _prompts(tokenizer, batch: int) -> list[list[int]]:
    chats = [[{"role": "user", "content": q}] for q in (QUESTIONS * 4)[:batch]]
    return [
        list(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False))
        for c in chats
    ]


def _run_generate(model, prompts: list[list[int]], max_new_tokens: int, eos: list[int], pad: int):
    return hf_generate_greedy(
        model, prompts, max_new_tokens=max_new_tokens, eos_token_ids=eos, pad_token_id=pad
    )


def _run_engine(engine, prompts: list[list[int]], max_new_tokens: int, eos: list[int]):
    start = time.perf_counter()
    result = engine.generate(prompts, max_new_tokens=max_new_tokens, stop_token_ids=eos)
    return result.tokens, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model name (default: the embedded SmolLM2)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each per batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from testtime.llm.engine import Engine
    from testtime.llm.loading import load_model

    model, tokenizer = load_model(args.model)
    eos = sorted(
        {
            tokenizer.eos_token_id,
            *(
                [model.generation_config.eos_token_id]
                if isinstance(model.generation_config.eos_token_id, int)
                else (model.generation_config.eos_token_id or [])
            ),
        }
    )
    engine = Engine(model)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}; engine path: {'lean' if engine.lean else 'fallback'}"
    )
    # Warm up both (first calls allocate and pick kernels).
    warm = _prompts(tokenizer, 2)
    _run_generate(model, warm, 4, eos, tokenizer.pad_token_id)
    _run_engine(engine, warm, 4, eos)

    summary: dict[str, object] = {
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "engine_path": "lean" if engine.lean else "fallback",
    }
    print(f"{'batch':>5} {'generate tok/s':>15} {'engine tok/s':>13} {'ratio':>6} {'tokens':>7} identical")
    for batch in args.batch_sizes:
        prompts = _prompts(tokenizer, batch)
        gen_rates, eng_rates, ratios = [], [], []
        identical = True
        tokens = 0
        for _ in range(args.repeats):
            ref, gen_s = _run_generate(model, prompts, args.max_new_tokens, eos, tokenizer.pad_token_id)
            got, eng_s = _run_engine(engine, prompts, args.max_new_tokens, eos)
            identical &= ref == got
            tokens = sum(len(r) for r in ref)
            gen_rates.append(tokens / gen_s)
            eng_rates.append(sum(len(r) for r in got) / eng_s)
            ratios.append(eng_rates[-1] / gen_rates[-1])
        gen, eng = statistics.median(gen_rates), statistics.median(eng_rates)
        ratio = statistics.median(ratios)
        print(f"{batch:>5} {gen:>15.1f} {eng:>13.1f} {ratio:>6.2f} {tokens:>7} {identical}", flush=True)
        summary[f"generate_tok_s_batch{batch}"] = round(gen, 2)
        summary[f"engine_tok_s_batch{batch}"] = round(eng, 2)
        summary[f"ratio_batch{batch}"] = round(ratio, 3)
        summary[f"identical_batch{batch}"] = identical
        summary[f"tokens_batch{batch}"] = tokens
    summary["loadavg_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
