"""The engine against transformers: greedy == generate, log-probs == a full forward pass, weight edits seen."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from testtime.llm import engine as engine_module
from testtime.llm.engine import DecodeBatch, Engine, Row, lean_supported
from testtime.llm.reference import hf_generate_greedy
from testtime.nn.sampling import sample_next
from testtime.testing import run_decode_batch

# transformers' Llama normalises in float32 even in a float64 model, testtime.nn's RMSNorm in float64:
# in float64 the two agree to about 1e-8 (greedy tokens exactly; tests/llm/test_engine.py).
TOL = 1e-6

PROMPTS = [[5, 17, 42, 9, 33, 2], [7, 8], [100, 101, 102, 103], [250]]


@pytest.fixture(scope="module")
def model64(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float64).eval()


def _generate_reference(model, prompts, max_new_tokens, eos):
    """``model.generate`` on a left-padded batch, cut after each row's first stop token."""
    rows, _ = hf_generate_greedy(
        model, prompts, max_new_tokens=max_new_tokens, eos_token_ids=eos, pad_token_id=0
    )
    return rows


def _full_forward_logprobs(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    with torch.inference_mode():
        logp = model(ids).logits[0].log_softmax(-1)
    return [logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(completion)]


@pytest.mark.parametrize("lean", [True, False])
def test_greedy_matches_generate(model64, lean):
    engine = Engine(model64, lean=lean)
    assert engine.lean is lean
    # A common token of the random model as a stop token, so that some rows stop early and others do not.
    eos = [int(torch.mode(torch.tensor(_generate_reference(model64, PROMPTS, 6, [-1])[0])).values)]
    expected = _generate_reference(model64, PROMPTS, 14, eos)
    result = engine.generate(PROMPTS, max_new_tokens=14, stop_token_ids=eos)
    assert result.tokens == expected
    assert {len(t) for t in expected} != {14}, "the test wants some rows to stop early"
    assert result.finish_reasons == ["stop" if t[-1] in eos else "length" for t in expected]


def test_lean_forward_matches_model_logits(model64):
    """Prefill logits of a ragged batch equal the model's own logits of each prompt alone."""
    engine = Engine(model64, lean=True)
    completions = [[3, 4, 5], [6], [7, 8], [9, 10, 11, 12]]
    scores = engine.score(PROMPTS, completions)
    for prompt, completion, got in zip(PROMPTS, completions, scores, strict=True):
        assert got == pytest.approx(_full_forward_logprobs(model64, prompt, completion), abs=TOL)


@pytest.mark.parametrize("lean", [True, False])
def test_sampled_logprobs_equal_full_forward(model64, lean):
    engine = Engine(model64, lean=lean)
    result = engine.generate(PROMPTS, max_new_tokens=8, temperature=1.0, seed=3, return_logprobs=True)
    for prompt, tokens, logprobs in zip(PROMPTS, result.tokens, result.logprobs, strict=True):
        assert len(logprobs) == len(tokens) == 8
        assert logprobs == pytest.approx(_full_forward_logprobs(model64, prompt, tokens), abs=TOL)


@pytest.mark.parametrize("lean", [True, False])
def test_score_equals_full_forward(model64, lean):
    engine = Engine(model64, lean=lean)
    completions = [[1, 2, 3], [], [40, 41, 42, 43, 44], [9]]
    scores = engine.score(PROMPTS, completions)
    assert scores[1] == []
    for prompt, completion, got in zip(PROMPTS, completions, scores, strict=True):
        assert got == pytest.approx(_full_forward_logprobs(model64, prompt, completion), abs=TOL)


def test_weight_edits_are_seen_without_reloading(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float64).eval()
    engine = Engine(model, lean=True)
    completions = [[3, 4, 5], [6], [7, 8], [9, 10, 11, 12]]

    def check() -> list[list[float]]:
        assert engine.generate(PROMPTS, max_new_tokens=6).tokens == _generate_reference(
            model, PROMPTS, 6, [-1]
        )
        scores = engine.score(PROMPTS, completions)
        for prompt, completion, got in zip(PROMPTS, completions, scores, strict=True):
            assert got == pytest.approx(_full_forward_logprobs(model, prompt, completion), abs=TOL)
        return scores

    before = check()
    layer = model.model.layers[0]
    with torch.no_grad():  # in place, like an optimizer step or an SVF expert written into the weights
        layer.mlp.gate_proj.weight.mul_(-3.0)
        layer.self_attn.q_proj.weight.mul_(4.0)
    after = check()
    assert after[0] != pytest.approx(before[0], abs=1e-6)
    # A replaced parameter object is seen too.
    layer.mlp.down_proj.weight = nn.Parameter(torch.randn_like(layer.mlp.down_proj.weight))
    replaced = check()
    assert replaced[0] != pytest.approx(after[0], abs=1e-6)


def test_parametrized_weights_are_read_every_call(tiny_llama_dir):
    from torch.nn.utils import parametrize

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float64).eval()

    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.z = nn.Parameter(torch.ones(()))

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            return weight * self.z

    scale = Scale()
    parametrize.register_parametrization(model.model.layers[1].mlp.up_proj, "weight", scale)
    engine = Engine(model, lean=True)
    completion = [3, 4, 5]
    first = engine.score(PROMPTS[:1], [completion])[0]
    assert first == pytest.approx(_full_forward_logprobs(model, PROMPTS[0], completion), abs=TOL)
    with torch.no_grad():
        scale.z.fill_(-5.0)
    second = engine.score(PROMPTS[:1], [completion])[0]
    assert second == pytest.approx(_full_forward_logprobs(model, PROMPTS[0], completion), abs=TOL)
    assert second != pytest.approx(first, abs=1e-6)


def test_adapters_force_the_fallback(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float64).eval()

    class Wrapped(nn.Module):
        def __init__(self, inner: nn.Linear) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) * 0.5

    model.model.layers[0].mlp.up_proj = Wrapped(model.model.layers[0].mlp.up_proj)
    ok, reason = lean_supported(model)
    assert not ok and "nn.Linear" in reason
    with pytest.raises(ValueError, match="lean forward does not support"):
        Engine(model, lean=True)
    engine = Engine(model)
    assert not engine.lean
    assert engine.generate(PROMPTS, max_new_tokens=6).tokens == _generate_reference(model, PROMPTS, 6, [-1])


def test_seeded_sampling_is_reproducible(model64):
    engine = Engine(model64)
    a = engine.generate(PROMPTS, max_new_tokens=10, temperature=1.0, seed=7).tokens
    b = engine.generate(PROMPTS, max_new_tokens=10, temperature=1.0, seed=7).tokens
    c = engine.generate(PROMPTS, max_new_tokens=10, temperature=1.0, seed=8).tokens
    assert a == b
    assert a != c


def test_compaction_keeps_rows_unchanged(model64):
    """Rows that finish leave the batch; the others' tokens are those of a batch that keeps every row."""

    def stop_early(row: int, tokens: list[int]) -> bool:
        return row % 2 == 0 and len(tokens) >= 3

    compacting = Engine(model64, compact_fraction=0.1)
    keeping = Engine(model64, compact_fraction=2.0)
    a = compacting.generate(PROMPTS, max_new_tokens=12, stop_check=stop_early)
    b = keeping.generate(PROMPTS, max_new_tokens=12, stop_check=stop_early)
    assert a.tokens == b.tokens
    assert [len(t) for t in a.tokens] == [3, 12, 3, 12]
    assert a.finish_reasons == ["stop", "length", "stop", "length"]


def test_sample_next_top_p_and_greedy():
    torch.manual_seed(0)
    logits = torch.randn(4, 50, dtype=torch.float64) * 3
    assert torch.equal(sample_next(logits, temperature=0.0), logits.argmax(-1))
    # A nucleus too small for a second token is greedy decoding.
    assert torch.equal(sample_next(logits, temperature=1.0, top_p=1e-6), logits.argmax(-1))
    probs = logits.softmax(-1)
    generator = torch.Generator().manual_seed(0)
    for row in range(4):
        order = probs[row].argsort(descending=True)
        cumulative = probs[row][order].cumsum(0)
        nucleus = set(order[: int((cumulative < 0.6).sum()) + 1].tolist())
        draws = {
            int(sample_next(logits[row : row + 1], temperature=1.0, top_p=0.6, generator=generator))
            for _ in range(200)
        }
        assert draws <= nucleus
        assert len(draws) == len(nucleus) or len(nucleus) > 5


def test_qwen3_uses_the_fallback_and_matches_generate():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).double().eval()
    engine = Engine(model)
    assert not engine.lean and "qwen3" in engine.fallback_reason
    assert engine.generate(PROMPTS, max_new_tokens=8).tokens == _generate_reference(model, PROMPTS, 8, [-1])


def test_prepacked_float32_path_matches_plain_and_generate(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    packed = Engine(model)
    if not packed.prepack:
        pytest.skip("oneDNN pre-packing is not available on this machine")
    plain = Engine(model, prepack=False)
    completions = [[3, 4, 5], [6], [7, 8], [9, 10, 11, 12]]
    for a, b in zip(packed.score(PROMPTS, completions), plain.score(PROMPTS, completions), strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    expected = _generate_reference(model, PROMPTS, 12, [-1])
    assert packed.generate(PROMPTS, max_new_tokens=12).tokens == expected
    # Packed weights follow in-place edits like the fused ones.
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(2.0)
        model.lm_head.weight.mul_(0.5)
    for a, b in zip(packed.score(PROMPTS, completions), plain.score(PROMPTS, completions), strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    with pytest.raises(ValueError, match="prepack"):
        Engine(AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float64), prepack=True)


@pytest.mark.parametrize("lean", [True, False])
def test_repeated_prompts_share_one_prefill(model64, lean):
    """n samples of one prompt (prefilled once, cache rows copied) equal the same rows prefilled apart."""
    engine = Engine(model64, lean=lean)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[0]]
    greedy = engine.generate(prompts, max_new_tokens=8).tokens
    assert greedy == _generate_reference(model64, prompts, 8, [-1])
    sampled = engine.generate(prompts, max_new_tokens=8, temperature=1.0, seed=0, return_logprobs=True)
    for prompt, tokens, logprobs in zip(prompts, sampled.tokens, sampled.logprobs, strict=True):
        assert logprobs == pytest.approx(_full_forward_logprobs(model64, prompt, tokens), abs=TOL)
    assert len({tuple(sampled.tokens[i]) for i in (0, 2, 3)}) > 1


def test_num_threads_applies_during_calls_only(model64):
    before = torch.get_num_threads()
    engine = Engine(model64, num_threads=1)
    seen = []

    def spy(row: int, tokens: list[int]) -> bool:
        seen.append(torch.get_num_threads())
        return False

    plain = Engine(model64).generate(PROMPTS, max_new_tokens=3).tokens
    assert engine.generate(PROMPTS, max_new_tokens=3, stop_check=spy).tokens == plain
    assert set(seen) == {1}
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        Engine(model64, num_threads=0)


def test_qwen2_biases_run_on_the_lean_path_and_match_generate():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(config).double().eval()
    with torch.no_grad():  # non-zero q/k/v biases, so that a bias bug shows
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_()
    engine = Engine(model)
    assert engine.lean
    assert engine.generate(PROMPTS, max_new_tokens=8).tokens == _generate_reference(model, PROMPTS, 8, [-1])
    completions = [[3, 4], [5], [6, 7, 8], [9]]
    for prompt, completion, got in zip(PROMPTS, completions, engine.score(PROMPTS, completions), strict=True):
        assert got == pytest.approx(_full_forward_logprobs(model, prompt, completion), abs=TOL)


@pytest.mark.parametrize("lean", [True, False])
def test_bfloat16_greedy_matches_generate_in_bfloat16(tiny_llama_dir, lean):
    """bf16 weights: the engine's greedy tokens equal transformers' own bf16 ``generate`` (ragged batch and alone)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16).eval()
    engine = Engine(model, lean=lean)
    assert engine.dtype == torch.bfloat16
    assert engine.generate(PROMPTS, max_new_tokens=16).tokens == _generate_reference(model, PROMPTS, 16, [-1])
    for prompt in PROMPTS[:2]:
        alone = engine.generate([prompt], max_new_tokens=16).tokens
        assert alone == _generate_reference(model, [prompt], 16, [-1])


@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_chunked_prefill_equals_whole_prefill(model64, chunk):
    """Prompts prefilled in chunks while other rows decode (rows joining at different steps, repeats of one
    prompt among them) give the tokens and log-probs of whole prefills, and greedy rows those of generate."""
    long_prompt = [(3 * j + 1) % 250 for j in range(23)]
    prompts = [long_prompt, *PROMPTS, long_prompt]
    expected = _generate_reference(model64, prompts, 9, [-1])

    def rows():
        return [Row(prompt=list(p), max_new_tokens=9, logprobs=True) for p in prompts]

    engine = Engine(model64, lean=True)
    whole = rows()
    run_decode_batch(DecodeBatch(engine, max_rows=8), {0: whole})
    chunked = rows()
    batch = DecodeBatch(engine, max_rows=8, prefill_chunk=chunk)
    # Staggered: the long prompt's chunks share forwards with decoding rows; its repeat joins later.
    run_decode_batch(batch, {0: chunked[1:3], 2: chunked[:1] + chunked[3:5], 4: chunked[5:]})
    assert [r.tokens for r in whole] == expected
    assert [r.tokens for r in chunked] == expected
    for a, b in zip(chunked, whole, strict=True):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-9)
    assert batch._stage is not None, "the test wants a prefill spread over several forwards"


def test_chunked_prefill_keeps_seeded_rows_independent(model64):
    """A seeded row draws the same tokens alone and next to others, whatever the chunk size."""
    long_prompt = [(7 * j + 2) % 250 for j in range(17)]

    def row(prompt, seed):
        return Row(
            prompt=list(prompt),
            max_new_tokens=12,
            temperature=1.0,
            generator=torch.Generator().manual_seed(seed),
        )

    engine = Engine(model64, lean=True)
    alone = row(long_prompt, 5)
    run_decode_batch(DecodeBatch(engine, max_rows=1), {0: [alone]})
    for chunk in (2, 4, None):
        together = row(long_prompt, 5)
        others = [row(p, 10 + i) for i, p in enumerate(PROMPTS)]
        run_decode_batch(
            DecodeBatch(engine, max_rows=8, prefill_chunk=chunk),
            {0: others[:2], 1: [together], 3: others[2:]},
        )
        assert together.tokens == alone.tokens, chunk


def test_per_row_decoding_attention_equals_the_masked_one(model64, monkeypatch):
    """Decoding rows of very different lengths: attention row by row equals one masked call."""
    prompts = [[(5 * j + 3) % 250 for j in range(40)], [7, 8], [100, 101, 102], [250]]
    results = {}
    monkeypatch.setattr(engine_module, "DETERMINISTIC_ATTENTION", False)  # let the padding rule decide
    for padding in (0, 10**9):  # 0: always row by row; 10**9: never
        monkeypatch.setattr(engine_module, "PER_ROW_ATTENTION_PADDING", padding)
        engine = Engine(model64, lean=True)
        out = engine.generate(prompts, max_new_tokens=8, return_logprobs=True)
        results[padding] = out
    assert results[0].tokens == results[10**9].tokens == _generate_reference(model64, prompts, 8, [-1])
    for a, b in zip(results[0].logprobs, results[10**9].logprobs, strict=True):
        assert a == pytest.approx(b, abs=1e-9)


def test_prefill_chunk_is_checked(model64):
    with pytest.raises(ValueError, match="prefill_chunk"):
        DecodeBatch(Engine(model64), max_rows=2, prefill_chunk=0)
