"""Continuous batching and the weight-update contract, against requests run alone and transformers' generate."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from testtime.llm import LocalLLM, SamplingParams
from testtime.llm.engine import Engine, Row
from testtime.llm.loading import load_model
from testtime.llm.reference import hf_generate_greedy
from testtime.llm.scheduler import Scheduler

CHATS = [
    [{"role": "user", "content": "what is the capital of france"}],
    [{"role": "system", "content": "answer"}, {"role": "user", "content": "one two three"}],
    "the quick brown",
    [{"role": "user", "content": "to be or not to be that is the question"}],
]
# Different parameters per caller: greedy, seeded sampling with top-p / top-k, n > 1, stop strings.
PARAMS = [
    SamplingParams(temperature=0, max_tokens=12),
    SamplingParams(temperature=1.0, top_p=0.9, max_tokens=20, seed=3, logprobs=True),
    SamplingParams(temperature=0.7, top_k=20, max_tokens=7, seed=11, n=3),
    SamplingParams(temperature=1.2, max_tokens=16, seed=5, logprobs=True, logprobs_temperature=True),
]


@pytest.fixture(scope="module")
def llm64(tiny_llama_dir):
    model, tokenizer = load_model(tiny_llama_dir, dtype=torch.float64)
    llm = LocalLLM(model, tokenizer, name="tiny", max_batch_size=16)
    yield llm
    llm.close()


def _alone(llm: LocalLLM, prompt, params: SamplingParams):
    """The request run with nothing else in the engine (a fresh engine batch of its own)."""
    engine = Engine(llm.model)
    scheduler = Scheduler(engine, max_batch_size=16)
    try:
        rows = scheduler.submit(llm.rows(llm.encode(prompt), params)).future.result(timeout=120)
    finally:
        scheduler.close()
    return [(r.tokens, r.token_logprobs) for r in rows]


def _key(choices):
    return [(c.token_ids, c.logprobs or []) for c in choices]


def _assert_concurrent_equals_alone(llm) -> None:
    """CHATS sent from staggered threads get exactly what each gets alone, and did share the batch."""
    expected = [_alone(llm, p, params) for p, params in zip(CHATS, PARAMS, strict=True)]
    results: dict[int, object] = {}

    def call(i: int) -> None:
        time.sleep(0.01 * i)  # staggered: later requests join a running batch
        results[i] = llm.generate([CHATS[i]], PARAMS[i])[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(CHATS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, want in enumerate(expected):
        got = _key(results[i])
        assert [g[0] for g in got] == [w[0] for w in want], f"request {i}"
        for (_, lp), (_, want_lp) in zip(got, want, strict=True):
            assert lp == pytest.approx(want_lp, abs=1e-9)
    assert llm.scheduler.max_running > 1, "the requests should have shared the batch"


def test_concurrent_threads_get_what_each_gets_alone(llm64):
    _assert_concurrent_equals_alone(llm64)


def test_asyncio_callers_and_join_mid_batch(llm64):
    expected = [_alone(llm64, p, params) for p, params in zip(CHATS, PARAMS, strict=True)]

    async def run():
        long = asyncio.create_task(llm64.agenerate([CHATS[1]], PARAMS[1].with_(max_tokens=40)))
        await asyncio.sleep(0.05)
        others = await asyncio.gather(*(llm64.agenerate([p], s) for p, s in zip(CHATS, PARAMS, strict=True)))
        return others, await long

    others, _ = asyncio.run(run())
    for out, want in zip(others, expected, strict=True):
        assert [c.token_ids for c in out[0]] == [w[0] for w in want]


def test_greedy_through_the_scheduler_equals_generate(llm64):
    prompts = [llm64.encode(c) for c in CHATS]
    rows, _ = hf_generate_greedy(
        llm64.model, prompts, max_new_tokens=10, eos_token_ids=llm64.eos_token_ids, pad_token_id=0
    )

    async def run():
        return await asyncio.gather(*(llm64.agenerate([c], temperature=0, max_tokens=10) for c in CHATS))

    out = asyncio.run(run())
    assert [o[0][0].token_ids for o in out] == rows


def test_cancelled_request_frees_its_slot(tiny_llama_dir):
    model, tokenizer = load_model(tiny_llama_dir, dtype=torch.float32)
    llm = LocalLLM(model, tokenizer, max_batch_size=1)  # one slot: the second request needs the first's
    try:
        params = SamplingParams(temperature=1.0, max_tokens=400, seed=0)

        async def run():
            first = asyncio.create_task(llm.agenerate(["the quick brown"], params))
            while llm.scheduler.running == 0:
                await asyncio.sleep(0.005)
            first.cancel()
            start = time.perf_counter()
            second = await llm.agenerate(["one two"], temperature=0, max_tokens=3)
            return second, time.perf_counter() - start

        steps_before = llm.scheduler.steps
        second, _ = asyncio.run(run())
        assert second[0][0].completion_tokens == 3
        # The cancelled row left long before its 400 tokens (a handful of steps ran, not hundreds).
        assert llm.scheduler.steps - steps_before < 100
    finally:
        llm.close()


def test_kv_budget_bounds_the_running_rows(tiny_llama_dir):
    model, tokenizer = load_model(tiny_llama_dir, dtype=torch.float32)
    llm = LocalLLM(model, tokenizer, max_batch_size=8, max_kv_tokens=3 * 40)
    try:
        prompt = llm.encode("one two")
        span = len(prompt) + 30
        assert 3 * span <= 120 < 4 * span
        out = llm.generate(["one two"], n=6, temperature=1.0, max_tokens=30, seed=1)
        assert len(out[0]) == 6 and llm.scheduler.max_running == 3
        with pytest.raises(ValueError, match="KV budget"):
            llm.generate(["one two"], max_tokens=500)
    finally:
        llm.close()


def test_top_logprobs_and_scaled_logprobs_equal_a_full_forward(llm64):
    params = SamplingParams(temperature=0.6, max_tokens=6, seed=2, logprobs=True, top_logprobs=3)
    for scaled in (False, True):
        choice = llm64.generate([CHATS[0]], params.with_(logprobs_temperature=scaled))[0][0]
        prompt = llm64.encode(CHATS[0])
        with torch.inference_mode():
            logits = llm64.model(torch.tensor([prompt + choice.token_ids])).logits[0]
        logits = logits[len(prompt) - 1 : -1] / (0.6 if scaled else 1.0)
        logp = logits.log_softmax(-1)
        want = [logp[j, t].item() for j, t in enumerate(choice.token_ids)]
        assert choice.logprobs == pytest.approx(want, abs=1e-6)
        for j, top in enumerate(choice.top_logprobs):
            values, ids = logp[j].topk(3)
            assert list(top) == ids.tolist()
            assert list(top.values()) == pytest.approx(values.tolist(), abs=1e-6)


def _reference_tokens(model, prompts, max_new_tokens):
    rows, _ = hf_generate_greedy(
        model, prompts, max_new_tokens=max_new_tokens, eos_token_ids=[-1], pad_token_id=0
    )
    return rows


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize("edit", ["fused_adamw", "data"])
def test_weight_update_contract(tiny_llama_dir, lean, edit):
    """After a change declared through the contract, the next step samples from the new weights."""
    model, tokenizer = load_model(tiny_llama_dir, dtype=torch.float64)
    llm = LocalLLM(model, tokenizer, lean=lean)
    try:
        assert llm.engine.lean is lean
        prompts = [llm.encode(c) for c in CHATS]
        greedy = SamplingParams(temperature=0, max_tokens=8)

        def ours() -> list[list[int]]:
            return [llm.generate([c], greedy)[0][0].token_ids for c in CHATS]

        def cut(rows):  # the reference without stop tokens, cut like ours at an end-of-sequence token
            eos = set(llm.eos_token_ids)
            return [r[: next((j + 1 for j, t in enumerate(r) if t in eos), len(r))] for r in rows]

        assert ours() == cut(_reference_tokens(model, prompts, 8))
        if edit == "fused_adamw":
            optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
            for p in model.parameters():
                p.grad = torch.randn_like(p)
            versions = [p._version for p in model.parameters()]
            with llm.updating_weights():
                optimizer.step()
            # Fused steps leave torch's version counters alone: only the declaration tells the engine.
            assert [p._version for p in model.parameters()] == versions
        else:
            for p in model.parameters():
                p.data.mul_(-1.5)
            llm.weights_changed()
        after = ours()
        assert after == cut(_reference_tokens(model, prompts, 8))
    finally:
        llm.close()


def test_updating_weights_pauses_the_running_batch(tiny_llama_dir):
    model, tokenizer = load_model(tiny_llama_dir, dtype=torch.float64)
    llm = LocalLLM(model, tokenizer)
    try:
        handle = llm.submit(
            llm.rows(llm.encode("the quick brown"), SamplingParams(temperature=0, max_tokens=60))
        )
        while not handle.rows[0].tokens:
            time.sleep(0.002)
        with llm.updating_weights():
            frozen = len(handle.rows[0].tokens)
            steps = llm.scheduler.steps
            time.sleep(0.3)
            assert llm.scheduler.steps == steps and len(handle.rows[0].tokens) == frozen
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(0.5)
        row = handle.future.result(timeout=60)[0]
        # Tokens generated after the update come from the new weights: the engine's continuation of the
        # tokens so far equals generate's continuation of them under the new weights.
        prefix = llm.encode("the quick brown") + row.tokens[:frozen]
        cut = row.tokens[frozen:]
        if cut and frozen < 60:
            reference = _reference_tokens(model, [prefix], len(cut))[0]
            assert cut == reference
    finally:
        llm.close()


def test_generate_rows_interface():
    """Rows carry their own params; a row with max_new_tokens 0 finishes at admission."""
    row = Row(prompt=[1, 2], max_new_tokens=0)
    assert row.span == 2


def test_chunked_prefill_callers_get_what_each_gets_alone(tiny_llama_dir):
    """With prompts prefilled a few tokens per step, concurrent callers still get what each gets alone."""
    model, tokenizer = load_model(tiny_llama_dir, dtype=torch.float64)
    llm = LocalLLM(model, tokenizer, max_batch_size=16, prefill_chunk=3)
    try:
        _assert_concurrent_equals_alone(llm)
        assert max(len(llm.encode(c)) for c in CHATS) > 3, "the prompts should span several chunks"
    finally:
        llm.close()
