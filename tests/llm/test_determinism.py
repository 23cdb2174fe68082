"""Per-request determinism in float32 and bfloat16: a seeded row gives bit-identical results alone and in a batch."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from testtime.llm import engine as engine_module
from testtime.llm.engine import DecodeBatch, Engine, Row
from testtime.nn.quant import quantized_products_available
from testtime.testing import run_decode_batch

DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.skipif(
    not engine_module._onednn_available(torch.device("cpu"), torch.float32), reason="no oneDNN"
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_products_give_a_row_the_same_result_alone_and_in_any_batch(dtype):
    """K = 1536 (SmolLM2's down projection): oneDNN sums one row in another order than several."""
    if not engine_module._onednn_available(torch.device("cpu"), dtype):
        pytest.skip(f"no oneDNN {dtype} products here")
    torch.manual_seed(0)
    linear = engine_module._Linear((torch.randn(576, 1536) * 0.02).to(dtype), None, prepack=True)
    x = torch.randn(40, 1536).to(dtype)
    alone = torch.cat([linear(x[i : i + 1]) for i in range(40)])
    for rows in (2, 3, 8, 17, 40):
        assert torch.equal(linear(x[:rows]), alone[:rows]), rows


def _row(prompt: list[int], seed: int) -> Row:
    return Row(
        prompt=list(prompt),
        max_new_tokens=10,
        temperature=1.0,
        generator=torch.Generator().manual_seed(seed),
        logprobs=True,
    )


@pytest.mark.parametrize(
    ("dtype", "quantize"), [(torch.float32, None), (torch.bfloat16, None), (torch.bfloat16, "int4")]
)
@pytest.mark.parametrize("threads", [1, 2])
def test_seeded_rows_are_bit_identical_alone_and_together(tiny_llama_dir, dtype, quantize, threads):
    """Rows of lengths on both sides of 64-column boundaries, joining at different steps: tokens and
    log-probabilities equal those of each row alone (the engine's default settings)."""
    if quantize is not None and not quantized_products_available(quantize):
        pytest.skip(f"no {quantize} products here")
    assert engine_module.DETERMINISTIC_ATTENTION
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=dtype).eval()
    engine = Engine(model, lean=True, quantize=quantize, num_threads=threads)
    prompts = [
        [(7 * j + 3 * k + 1) % 250 for j in range(length)] for k, length in enumerate((3, 60, 70, 130))
    ]
    alone = [_row(p, 100 + i) for i, p in enumerate(prompts)]
    for row in alone:
        run_decode_batch(DecodeBatch(engine, max_rows=1), {0: [row]})
    together = [_row(p, 100 + i) for i, p in enumerate(prompts)]
    run_decode_batch(DecodeBatch(engine, max_rows=8), {0: together[:2], 2: together[2:3], 5: together[3:]})
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        assert b.tokens == a.tokens, i
        assert b.token_logprobs == a.token_logprobs, i  # exactly, not approximately
