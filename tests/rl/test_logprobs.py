"""completion_logprobs against a naive full log-softmax gather, row by row, values and gradients."""

from __future__ import annotations

import pytest
import torch

from testtime.rl.logprobs import completion_logprobs

PROMPTS = [[1, 5, 6, 7], [1, 9], [1, 3, 4]]
COMPLETIONS = [[10, 11, 12], [13], [14, 15, 16, 17, 18]]


def naive(model, prompts, completions, temperature):
    """Each row alone, no padding: full logits, full log_softmax, gather."""
    rows = []
    for prompt, completion in zip(prompts, completions, strict=True):
        ids = torch.tensor([prompt + completion])
        logits = model(input_ids=ids).logits[0] / temperature
        logp = torch.log_softmax(logits.double(), -1)
        positions = torch.arange(len(prompt) - 1, len(prompt) + len(completion) - 1)
        rows.append(logp[positions, torch.tensor(completion)])
    return rows


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [2, 1024])
def test_equals_naive_values_and_gradients(temperature, chunk_size, make_llama):
    model = make_llama()
    logps, mask = completion_logprobs(
        model, PROMPTS, COMPLETIONS, temperature=temperature, chunk_size=chunk_size
    )
    assert logps.shape == mask.shape == (3, 5)
    assert mask.sum(-1).tolist() == [3, 1, 5]
    reference = naive(model, PROMPTS, COMPLETIONS, temperature)
    for row, ref in enumerate(reference):
        torch.testing.assert_close(logps[row, : len(ref)].double(), ref, atol=1e-5, rtol=1e-5)
        assert torch.all(logps[row, len(ref) :] == 0)
    weights = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (logps.double() * weights * mask).sum().backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    sum((ref * weights[row, : len(ref)]).sum() for row, ref in enumerate(reference)).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_entropy_and_fallback_path(make_llama):
    model = make_llama(seed=3)
    logps, mask, entropy = completion_logprobs(model, PROMPTS, COMPLETIONS, return_entropy=True, chunk_size=3)
    ids = torch.tensor([PROMPTS[2] + COMPLETIONS[2]])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)[2:7]
    torch.testing.assert_close(entropy[2].double(), -(logp.exp() * logp).sum(-1), atol=1e-6, rtol=1e-6)
    assert not entropy.requires_grad

    class LogitsOnly(torch.nn.Module):  # no get_decoder: the full-forward path
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            ).logits

    other, _ = completion_logprobs(LogitsOnly(model), PROMPTS, COMPLETIONS, chunk_size=3)
    torch.testing.assert_close(other, logps, atol=1e-6, rtol=1e-6)


def test_empty_completion_and_errors(make_llama):
    model = make_llama()
    logps, mask = completion_logprobs(model, [[1, 2], [1]], [[], [5]])
    assert mask.tolist() == [[0.0], [1.0]] and logps[0, 0] == 0
    with pytest.raises(ValueError, match="temperature"):
        completion_logprobs(model, [[1]], [[2]], temperature=0)
    with pytest.raises(ValueError, match="at least one token"):
        completion_logprobs(model, [[]], [[2]])
    with pytest.raises(ValueError, match="prompts but"):
        completion_logprobs(model, [[1]], [[2], [3]])


def test_engine_sampling_logprobs_equal_training_forward(make_llama):
    """num_iterations = 1 can use the engine's sampled log-probs as old_logps (temperature 1 today)."""
    from testtime.llm.engine import Engine

    model = make_llama(seed=5, dtype=torch.float32).eval()
    engine = Engine(model)
    prompts = [[1, 5, 6, 7], [1, 9, 8]]
    out = engine.generate(prompts, max_new_tokens=6, temperature=1.0, seed=0, return_logprobs=True)
    with torch.no_grad():
        logps, mask = completion_logprobs(model, prompts, out.tokens)
    for row, (tokens, sampled) in enumerate(zip(out.tokens, out.logprobs, strict=True)):
        assert len(tokens) == len(sampled) > 0
        torch.testing.assert_close(logps[row, : len(tokens)], torch.tensor(sampled), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_shared_prompt_path_equals_naive(temperature, make_llama):
    """GRPO groups: identical prompts run once with a repeated cache; values and gradients unchanged."""
    model = make_llama(seed=7)
    prompts = [[1, 5, 6, 7]] * 3 + [[1, 9]] * 2
    completions = [[10, 11, 12], [13], [14, 15, 16, 17], [], [18, 19]]
    widths = []
    hook = model.get_decoder().register_forward_hook(
        lambda module, args, kwargs, out: widths.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    logps, mask = completion_logprobs(model, prompts, completions, temperature=temperature, chunk_size=3)
    hook.remove()
    # the shared path really ran: each distinct prompt once (batch 1), then its rows' completions on its cache
    assert widths == [(1, 4), (3, 3), (1, 2), (2, 1)]
    plain, _ = completion_logprobs(
        model, prompts, completions, temperature=temperature, chunk_size=3, share_prompts=False
    )
    torch.testing.assert_close(logps, plain, atol=1e-6, rtol=1e-6)
    assert mask.sum(-1).tolist() == [3, 1, 4, 0, 2]
    keep = [i for i, c in enumerate(completions) if c]
    reference = naive(model, [prompts[i] for i in keep], [completions[i] for i in keep], temperature)
    for i, ref in zip(keep, reference, strict=True):
        torch.testing.assert_close(logps[i, : len(ref)].double(), ref, atol=1e-5, rtol=1e-5)
    weights = torch.randn(5, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (logps.double() * weights * mask).sum().backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    sum((ref * weights[i, : len(ref)]).sum() for i, ref in zip(keep, reference, strict=True)).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, atol=1e-6, rtol=1e-5, msg=name)
