"""Per-token log-probabilities (with gradients) of given completions after given prompts.

One training forward of a causal LM over ``prompt + completion`` rows gives, for every completion token
``o_t``, ``log pi(o_t | q, o_<t)`` at a sampling temperature ``tau`` (logits divided by ``tau``, as the
sampler drew them): the quantity every policy-gradient loss of :mod:`testtime.rl.grpo` consumes, for the
policy (with gradients) and for the reference model (without).

Layout: prompts are left padded and completions right padded, so every completion starts at the same column
``P`` (the longest prompt); position ids count from each row's first real token, as the sampling engine
does, so the numbers match the engine's. Only the hidden states of real completion positions are kept;
they are flattened to ``N`` rows and pushed through the LM head ``chunk_size`` rows at a time, each chunk
giving the token's log-probability as ``logit[o_t] - logsumexp(logits)``: no ``(B, T, V)`` log-softmax
is ever held. When gradients are on and there is more than one chunk, each chunk runs under activation
checkpointing, so backward also holds one chunk's logits at a time (at the price of recomputing the LM-head
product, one extra ``N x H x V`` matmul).

Models: any transformers causal LM with ``get_decoder()`` and ``get_output_embeddings()`` (Llama, Qwen2,
Mistral, SmolLM2, GPT-2 ...). Models whose logits are post-processed after the LM head (Gemma-2's
``final_logit_softcapping``, Cohere's ``logit_scale``) and models without those accessors (the package's own
``nn.Module`` language models, which return logits or an output with ``.logits``) take the full forward,
chunked only in the log-softmax.

Shape legend: B rows, P longest prompt, T longest completion, H hidden size, V vocabulary, N real
completion tokens in the batch, C chunk rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["batch_rows", "completion_logprobs", "token_logprobs_from_logits"]


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under a DDP / compile wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


def batch_rows(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int = 0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Left-pad prompts, right-pad completions, and build the attention mask and position ids.

    Returns:
        ``(input_ids, attention_mask, position_ids, completion_mask, P)``: the first three (B, P + T), the
        completion mask (B, T) float (1.0 on real completion tokens), and the completion's start column P.
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    if not prompt_ids:
        raise ValueError("need at least one row")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError(
            "every prompt needs at least one token (the first completion token is predicted from it)"
        )
    longest_prompt = max(len(p) for p in prompt_ids)
    longest_completion = max(1, max(len(c) for c in completion_ids))
    rows = len(prompt_ids)
    width = longest_prompt + longest_completion
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    completion_mask = torch.zeros((rows, longest_completion))
    for row, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        start = longest_prompt - len(prompt)
        input_ids[row, start:longest_prompt] = torch.as_tensor(list(prompt), dtype=torch.long)
        attention[row, start:longest_prompt] = 1
        if completion:
            end = longest_prompt + len(completion)
            input_ids[row, longest_prompt:end] = torch.as_tensor(list(completion), dtype=torch.long)
            attention[row, longest_prompt:end] = 1
            completion_mask[row, : len(completion)] = 1.0
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    return (
        input_ids.to(device),
        attention.to(device),
        position_ids.to(device),
        completion_mask.to(device),
        longest_prompt,
    )


def token_logprobs_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0, entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log softmax(logits / temperature)[target]`` per row, and optionally the row's entropy (no grad).

    Args:
        logits: (C, V) raw logits.
        targets: (C,) token ids.
        temperature: the softmax temperature (> 0).
        entropy: also return ``-sum p log p`` of each row, detached.

    Returns:
        ``(logps (C,), entropy (C,) or None)``, float32.
    """
    scaled = logits.float() / temperature
    normalizer = torch.logsumexp(scaled, dim=-1)
    logps = scaled.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normalizer
    ent = None
    if entropy:
        with torch.no_grad():
            log_p = scaled - normalizer.unsqueeze(-1)
            ent = -(log_p.exp() * log_p).sum(-1)
    return logps, ent


def _post_processed_logits(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    if config is None:
        return True
    if getattr(config, "final_logit_softcapping", None) is not None:
        return True
    return getattr(config, "logit_scale", None) not in (None, 1, 1.0)


def _can_share(decoder: nn.Module) -> bool:
    """Whether the decoder takes a transformers ``DynamicCache`` (the shared-prompt path needs one), under
    either name of the keyword (``past_key_values``, or ``cache`` in newer transformers)."""
    import inspect

    try:
        from transformers import DynamicCache
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    from testtime.llm.compat import cache_keyword

    try:
        accepts = cache_keyword(decoder) in inspect.signature(decoder.forward).parameters
    except (TypeError, ValueError):
        return False
    return accepts and hasattr(DynamicCache, "batch_repeat_interleave")


def _shared_prompt_states(
    decoder: nn.Module,
    groups: dict[tuple[int, ...], list[int]],
    completion_ids: Sequence[Sequence[int]],
    length: int,
    device: torch.device,
    pad_token_id: int,
) -> torch.Tensor:
    """(B, T, H) hidden states predicting each completion token, one prompt forward per distinct prompt.

    For a group of n rows sharing prompt p (length P): the prompt runs once (batch 1, cache on), its cache is
    repeated n times, and the right-padded completions run on top with positions P, P + 1, ...; the state
    predicting completion token 0 is the prompt's last state.
    """
    from transformers import DynamicCache

    from testtime.llm.compat import cache_kwargs, returned_cache

    rows = sum(len(v) for v in groups.values())
    per_row: list[torch.Tensor | None] = [None] * rows
    for prompt, members in groups.items():
        count = len(members)
        prompt_tensor = torch.tensor([list(prompt)], dtype=torch.long, device=device)
        cache = DynamicCache()
        out = decoder(input_ids=prompt_tensor, use_cache=True, **cache_kwargs(decoder, cache))
        last = out.last_hidden_state[:, -1:]  # (1, 1, H)
        width = max(1, max(len(completion_ids[r]) for r in members))
        states = last.expand(count, 1, last.shape[-1])
        if width > 1:
            cache = returned_cache(out)
            cache.batch_repeat_interleave(count)
            tokens = torch.full((count, width - 1), pad_token_id, dtype=torch.long)
            mask = torch.zeros((count, len(prompt) + width - 1), dtype=torch.long)
            mask[:, : len(prompt)] = 1
            for i, r in enumerate(members):
                body = list(completion_ids[r])[: width - 1]
                if body:
                    tokens[i, : len(body)] = torch.as_tensor(body, dtype=torch.long)
                    mask[i, len(prompt) : len(prompt) + len(body)] = 1
            positions = torch.arange(len(prompt), len(prompt) + width - 1).expand(count, -1)
            hidden = decoder(
                input_ids=tokens.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=True,
                **cache_kwargs(decoder, cache),
            ).last_hidden_state  # (n, width - 1, H)
            states = torch.cat([states, hidden], dim=1)
        if width < length:
            states = torch.nn.functional.pad(states, (0, 0, 0, length - width))
        for i, r in enumerate(members):
            per_row[r] = states[i, :length]
    return torch.stack(per_row)  # type: ignore[arg-type]


def completion_logprobs(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    return_entropy: bool = False,
    pad_token_id: int | None = None,
    share_prompts: bool = True,
) -> Any:
    """Per-token log-probabilities of ``completion_ids`` after ``prompt_ids`` under ``model``, with gradients.

    Args:
        model: a transformers causal LM (or a DDP wrapper around one), or any module mapping ``input_ids``
            to logits (see the module docstring).
        prompt_ids: B lists of prompt token ids (each non-empty).
        completion_ids: B lists of completion token ids (may be empty).
        temperature: the sampling temperature the completions were drawn at (logits are divided by it).
        chunk_size: how many completion positions go through the LM head and log-softmax at once.
        return_entropy: also return the per-token entropy of the (temperature-scaled) distribution.
        pad_token_id: the id used for padding (default: the model config's, else 0); padded positions are
            masked, so its value does not change the result.
        share_prompts: rows with identical prompts (a GRPO group) run the prompt once and attend to its
            key/value cache repeated per row; gradients flow through the shared cache into the prompt's
            forward. Same numbers as the plain batch up to float rounding.

    Returns:
        ``(logps, mask)``, both (B, T) float32 and right padded (T = longest completion, at least 1):
        ``logps`` carries gradients when grad is enabled and is 0 where ``mask`` is 0. With
        ``return_entropy``: ``(logps, mask, entropy)``, entropy (B, T) detached.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score tokens, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    inner = _unwrap(model)
    config = getattr(inner, "config", None)
    if pad_token_id is None:
        pad_token_id = getattr(config, "pad_token_id", None)
        pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
    device = next(inner.parameters()).device
    input_ids, attention, positions, mask, start = batch_rows(
        prompt_ids, completion_ids, pad_token_id=pad_token_id, device=device
    )
    rows, length = mask.shape
    # Position start + t - 1 predicts completion token t.
    real = mask.bool()
    targets = input_ids[:, start:][real]  # (N,)
    fast = (
        hasattr(inner, "get_decoder")
        and hasattr(inner, "get_output_embeddings")
        and inner.get_output_embeddings() is not None
        and not _post_processed_logits(inner)
    )
    if fast:
        decoder = inner.get_decoder()
        head = inner.get_output_embeddings()
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, prompt in enumerate(prompt_ids):
            groups.setdefault(tuple(prompt), []).append(row)
        if share_prompts and len(groups) < rows and _can_share(decoder):
            states = _shared_prompt_states(decoder, groups, completion_ids, length, device, pad_token_id)[
                real
            ]
        else:
            hidden = decoder(
                input_ids=input_ids, attention_mask=attention, position_ids=positions
            ).last_hidden_state
            states = hidden[:, start - 1 : start - 1 + length][real]  # (N, H)

        def chunk_fn(h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            return token_logprobs_from_logits(head(h), y, temperature=temperature, entropy=return_entropy)

    else:
        out = inner(input_ids=input_ids, attention_mask=attention, position_ids=positions)
        logits = out if isinstance(out, torch.Tensor) else out.logits
        states = logits[:, start - 1 : start - 1 + length][real]  # (N, V)

        def chunk_fn(h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            return token_logprobs_from_logits(h, y, temperature=temperature, entropy=return_entropy)

    total = states.shape[0]
    many = total > chunk_size and torch.is_grad_enabled()
    pieces, entropies = [], []
    for begin in range(0, total, chunk_size):
        h, y = states[begin : begin + chunk_size], targets[begin : begin + chunk_size]
        if many:
            lp, ent = checkpoint(chunk_fn, h, y, use_reentrant=False)
        else:
            lp, ent = chunk_fn(h, y)
        pieces.append(lp)
        entropies.append(ent)
    flat = torch.cat(pieces) if pieces else states.new_zeros(0, dtype=torch.float32)
    logps = torch.zeros(rows, length, dtype=torch.float32, device=device)
    logps = logps.masked_scatter(real, flat)
    if not return_entropy:
        return logps, mask
    entropy = torch.zeros(rows, length, dtype=torch.float32, device=device)
    if entropies:
        entropy = entropy.masked_scatter(real, torch.cat([e for e in entropies if e is not None]))
    return logps, mask, entropy
