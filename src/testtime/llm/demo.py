"""Demo part: the embedded model answers a batch of prompts through the engine, with throughput.

All prompts go to the local backend in one call (one engine batch, greedy); the part then times
``model.generate`` on the same batch (full runs only) and reports both aggregate tokens/s, and shows
sampling (n = 4 at temperature 0.7, top-p 0.9) with the log-probabilities RL uses.
"""

from __future__ import annotations

import copy

import torch

from testtime.demo_base import DemoContext, DemoSection
from testtime.llm.reference import hf_generate_greedy

PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Give one reason the sky looks blue.",
    "Write a haiku about test-time compute.",
    "What is 12 + 30?",
    "Name three fruits that are red.",
    "Explain gravity to a child in one sentence.",
    "What is a prime number?",
    "Tell me a short joke about computers.",
)


def _generate_rate(model, llm, prompts, max_new_tokens: int) -> float:
    """Aggregate tokens/s of ``model.generate`` (greedy, left-padded batch) on the same prompts."""
    rows, seconds = hf_generate_greedy(
        model,
        [llm.encode(p) for p in prompts],
        max_new_tokens=max_new_tokens,
        eos_token_ids=llm.eos_token_ids,
        pad_token_id=llm.tokenizer.pad_token_id,
    )
    return sum(len(r) for r in rows) / seconds


def run(ctx: DemoContext) -> DemoSection:
    """Answer ``PROMPTS`` in one batch, compare with ``generate``, then sample with log-probs."""
    model, _ = ctx.model_and_tokenizer()
    llm = ctx.llm()
    threads = llm.engine.num_threads
    max_tokens = 12 if ctx.quick else 64
    prompts = PROMPTS[:4] if ctx.quick else PROMPTS
    chats = [[{"role": "user", "content": p}] for p in prompts]
    path = "lean Llama forward" if llm.engine.lean else f"model forward ({llm.engine.fallback_reason})"
    print(f"engine: {path}; {len(chats)} prompts in one batch, greedy, up to {max_tokens} tokens each")
    before = copy.copy(llm.usage)
    out = llm.generate(chats, temperature=0, max_tokens=max_tokens)
    used = llm.usage - before
    engine_rate = used.completion_tokens / used.wall_seconds
    for prompt, (choice,) in zip(prompts, out, strict=True):
        print(f"\n> {prompt}\n{choice.text.strip()}")
    print(
        f"\n[engine: {used.completion_tokens} tokens in {used.wall_seconds:.2f} s, {engine_rate:.1f} tok/s]"
    )
    lines = [
        f"Engine path: {path}. One batch of {len(chats)} chat prompts, greedy, up to {max_tokens} tokens.",
        "",
        "| prompt | answer | tokens |",
        "|---|---|---|",
    ]
    for prompt, (choice,) in zip(prompts, out, strict=True):
        cell = choice.text.strip().replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {prompt} | {cell} | {choice.completion_tokens} |")
    lines += [
        "",
        f"Engine: {used.completion_tokens} tokens in {used.wall_seconds:.2f} s, "
        f"**{engine_rate:.1f} tok/s** aggregate.",
    ]
    if not ctx.quick:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads or previous)  # the same threads as the engine, for a fair ratio
        try:
            rate = _generate_rate(model, llm, chats, max_tokens)
        finally:
            torch.set_num_threads(previous)
        print(
            f"[transformers generate on the same batch: {rate:.1f} tok/s; engine / generate = "
            f"{engine_rate / rate:.2f}]"
        )
        lines.append(
            f"`transformers.generate` on the same batch: {rate:.1f} tok/s "
            f"(engine / generate = {engine_rate / rate:.2f}; one run each on a shared CPU)."
        )
    samples = llm.generate(
        chats[2:3], n=4, temperature=0.7, top_p=0.9, max_tokens=max_tokens // 2, seed=ctx.seed, logprobs=True
    )[0]
    lines += [
        "",
        f"Four samples (temperature 0.7, top-p 0.9) for “{prompts[2]}” with their total log-probability "
        "under the model:",
        "",
    ]
    for choice in samples:
        total = sum(choice.logprobs or [])
        text = choice.text.strip().replace("\n", " ")
        print(f"  [{total:7.2f}] {text}")
        lines.append(f"- `{total:.2f}` {text}")
    return DemoSection(title="The embedded model answers (batched engine)", markdown="\n".join(lines))
