"""The local backend on a tiny saved Llama: chat templates, n, stop strings, accounting, log-probs."""

from __future__ import annotations

import pytest
import torch

from testtime.llm import LocalLLM
from testtime.llm.loading import load_model

# transformers' Llama normalises in float32 even in a float64 model, testtime.nn's RMSNorm in float64:
# in float64 the two agree to about 1e-8 (greedy tokens exactly; tests/llm/test_engine.py).
TOL = 1e-6

CHATS = [
    [{"role": "user", "content": "what is the capital of france"}],
    [{"role": "system", "content": "answer"}, {"role": "user", "content": "one two three"}],
]


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    model, tokenizer = load_model(tiny_llama_dir, dtype=torch.float64)
    return LocalLLM(model, tokenizer, name="tiny", max_batch_size=3)


def test_greedy_chat_equals_generate(llm):
    out = llm.generate(CHATS, temperature=0, max_tokens=10)
    for chat, (choice,) in zip(CHATS, out, strict=True):
        ids = llm.tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        assert choice.prompt_tokens == ids["input_ids"].shape[1]
        with torch.inference_mode():
            ref = llm.model.generate(**ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
        new = ref[0, ids["input_ids"].shape[1] :].tolist()
        cut = next((j + 1 for j, t in enumerate(new) if t in llm.eos_token_ids), len(new))
        assert choice.token_ids == new[:cut]
        assert choice.text == llm.tokenizer.decode(new[:cut], skip_special_tokens=True)
        assert choice.finish_reason == (
            "stop" if cut < len(new) or new[-1] in llm.eos_token_ids else "length"
        )


def test_n_samples_batches_and_accounting(llm):
    before = llm.usage.calls
    out = llm.generate(CHATS, n=3, temperature=1.0, max_tokens=6, seed=0, logprobs=True)
    assert [len(choices) for choices in out] == [3, 3]
    assert llm.usage.calls - before == 6
    texts = [c.token_ids for c in out[0]]
    assert len({tuple(t) for t in texts}) > 1, "three samples at temperature 1 should not all agree"
    again = llm.generate(CHATS, n=3, temperature=1.0, max_tokens=6, seed=0)
    assert [[c.token_ids for c in choices] for choices in again] == [[c.token_ids for c in ch] for ch in out]
    # The sampled tokens' log-probs are those of a full forward pass of prompt + completion.
    for chat, choices in zip(CHATS, out, strict=True):
        prompt = llm.encode(chat)
        for choice in choices:
            ids = torch.tensor([prompt + choice.token_ids])
            with torch.inference_mode():
                logp = llm.model(ids).logits[0].log_softmax(-1)
            expected = [logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(choice.token_ids)]
            assert choice.logprobs == pytest.approx(expected, abs=TOL)


def test_stop_strings_cut_the_text(llm):
    free = llm.generate(["the quick brown"], temperature=0, max_tokens=12)[0][0]
    assert len(free.text) > 4
    stop = free.text[2:4]
    cut = llm.generate(["the quick brown"], temperature=0, max_tokens=12, stop=[stop])[0][0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(stop)]
    assert stop not in cut.text
    assert cut.completion_tokens <= free.completion_tokens


def test_score_tokens_equals_full_forward(llm):
    prompt = llm.encode("to be or not")
    completion = llm.tokenizer("to be that is", add_special_tokens=False)["input_ids"]
    got = llm.score(["to be or not"], ["to be that is"])[0]
    ids = torch.tensor([prompt + completion])
    with torch.inference_mode():
        logp = llm.model(ids).logits[0].log_softmax(-1)
    assert got == pytest.approx(
        [logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(completion)], abs=TOL
    )


def test_zero_max_tokens_and_empty_batch(llm):
    assert llm.generate([]) == []
    out = llm.generate(["hello"], max_tokens=0)[0][0]
    assert (out.text, out.completion_tokens, out.finish_reason) == ("", 0, "length")


def test_score_continuations_equals_the_tasks_transformers_scorer(llm):
    from testtime.tasks.scoring import ContinuationScorer, TransformersScorer

    assert isinstance(llm, ContinuationScorer)
    prompt = "Question: what is the capital of france?\nAnswer:"
    options = [" paris", " the lazy dog", " one two three four"]
    ours = llm.score_continuations(prompt, options)
    reference = TransformersScorer(llm.model, llm.tokenizer, share_prompt=False).score_continuations(
        prompt, options
    )
    for (logprob, count), (ref_logprob, ref_count) in zip(ours, reference, strict=True):
        assert count == ref_count
        assert logprob == pytest.approx(ref_logprob, abs=TOL)
    with pytest.raises(ValueError, match="at least one token"):
        llm.score_continuations(prompt, [""])


def test_reference_generate_matches_the_engine_on_ragged_prompts(llm):
    from testtime.llm.reference import hf_generate_greedy

    prompts = [llm.encode(chat) for chat in CHATS]
    assert len(prompts[0]) != len(prompts[1])  # ragged: left padding is exercised
    rows, seconds = hf_generate_greedy(
        llm.model,
        prompts,
        max_new_tokens=8,
        eos_token_ids=llm.eos_token_ids,
        pad_token_id=llm.tokenizer.pad_token_id,
    )
    assert seconds > 0
    out = llm.generate(CHATS, temperature=0, max_tokens=8)
    assert rows == [choices[0].token_ids for choices in out]
