"""Decoding with the latent cache: a prefill through the expanded MLA path, then one token per step through
the absorbed path (W^UK folded into the query, attention straight over the cached latents). Tokens are
drawn by :func:`testtime.nn.sampling.sample_next`, the package's one sampler.

Shape legend: ``b`` batch, ``s`` prompt length, ``n`` new tokens.
"""

from __future__ import annotations

import torch

from testtime.deepseek.model import DeepSeekV3ForCausalLM
from testtime.nn.sampling import sample_next  # the package's one sampler (re-exported)

__all__ = ["generate", "sample_next"]


@torch.no_grad()
def generate(
    model: DeepSeekV3ForCausalLM,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Autoregressive decoding with the latent KV cache.

    Args:
        model: the model (put in eval mode by the caller).
        input_ids: ``(b, s)`` prompts of equal length.
        max_new_tokens: n.
        temperature: 0 for greedy decoding.
        top_k: sample among the k most likely tokens.
        top_p: sample from the nucleus of this probability mass (1: all).
        eos_token_id: stop once every sequence has produced it (later positions repeat it).
        generator: random generator for sampling.

    Returns:
        ``(b, s + n')`` prompts and continuations, n' <= n.
    """
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    cache = model.new_cache(input_ids.shape[0], capacity=input_ids.shape[1] + max_new_tokens)
    logits = model(input_ids, cache=cache).logits[:, -1]
    tokens = [input_ids]
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    for step in range(max_new_tokens):
        nxt = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        tokens.append(nxt[:, None])
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        logits = model(nxt[:, None], cache=cache).logits[:, -1]
    return torch.cat(tokens, dim=1)
