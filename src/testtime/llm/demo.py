"""Demo part: the embedded model answers a few prompts, with timings."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from testtime.demo import DemoContext, DemoSection

PROMPTS = (
    "What is the capital of France? Answer in one sentence.",
    "Give one reason the sky looks blue.",
    "Write a haiku about test-time compute.",
    "What is 12 + 30?",
)


def run(ctx: DemoContext) -> DemoSection:
    """Answer ``PROMPTS`` greedily, one at a time, printing each answer with its speed."""
    model, tokenizer = ctx.model_and_tokenizer()
    max_new_tokens = 16 if ctx.quick else 48
    rows = []
    for prompt in tqdm(PROMPTS, desc="answering", unit="prompt"):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        seconds = time.perf_counter() - start
        new = out[0, ids.shape[1] :]
        answer = tokenizer.decode(new, skip_special_tokens=True).strip()
        rows.append((prompt, answer, len(new), seconds))
        tqdm.write(
            f"\n> {prompt}\n{answer}\n[{len(new)} tokens in {seconds:.2f} s, {len(new) / seconds:.1f} tok/s]"
        )
    table = ["| prompt | answer | tokens | tok/s |", "|---|---|---|---|"]
    for prompt, answer, count, seconds in rows:
        cell = answer.replace("|", "\\|").replace("\n", " ")
        table.append(f"| {prompt} | {cell} | {count} | {count / seconds:.1f} |")
    return DemoSection(title="The embedded model answers", markdown="\n".join(table))
