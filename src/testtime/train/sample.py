"""Sampling text from a trained model: temperature and top-k, with a KV cache when the model has one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from testtime.errors import UserError
from testtime.train.checkpoint import CheckpointFiles, latest_checkpoint, load_weights
from testtime.train.registry import build_model, get_model_spec, output_field, resolve_model_config
from testtime.train.tokenizer import Tokenizer, load_tokenizer

__all__ = ["generate", "load_trained", "peek_model_name", "resolve_checkpoint"]


def _next_token(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
    top_p: float = 1.0,
) -> int:
    """``logits (V,)`` -> a token id with the package's one sampler (argmax at temperature 0)."""
    from testtime.nn.sampling import sample_next

    if temperature <= 0:
        return int(logits.argmax())
    return int(
        sample_next(
            logits.float().cpu()[None], temperature=temperature, top_p=top_p, top_k=top_k, generator=generator
        )[0]
    )


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: list[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    stop_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    max_context: int | None = None,
) -> list[int]:
    """Continue ``prompt`` by up to ``max_new_tokens`` tokens.

    Models with ``new_caches()`` decode one token per forward pass with key/value caches; when the cached
    context reaches ``max_context``, the caches restart from the last ``3 * max_context // 4`` tokens (one
    prefill every ``max_context // 4`` tokens instead of one per token). Other models re-read the last
    ``max_context`` tokens at every step.

    Args:
        model: a model following the trainer's contract (returns ``logits``).
        prompt: token ids (at least one).
        max_new_tokens: how many tokens to add at most.
        temperature: softmax temperature (0: greedy).
        top_k: sample among the k most likely tokens only.
        top_p: nucleus threshold (1: off).
        stop_id: stop after generating this id (e.g. ``<|endoftext|>``).
        generator: random source for sampling.
        use_cache: use the model's caches when it has them.
        max_context: the longest context the model reads (default: its ``max_seq_len`` attribute, if any);
            the training sequence length is a good choice, since attention rarely extrapolates beyond it.

    Returns:
        The new token ids (without the prompt).
    """
    if not prompt:
        raise UserError("the prompt must have at least one token")
    model.eval()
    device = next(model.parameters()).device
    max_len = max_context or int(getattr(model, "max_seq_len", 1 << 30))
    use_cache = use_cache and hasattr(model, "new_caches")
    ids, new = list(prompt), []
    caches, pending, cached = None, list(ids), 0
    for _ in range(max_new_tokens):
        if use_cache:
            if caches is None or cached + len(pending) > max_len:  # (re)start from the recent context
                keep = max(1, 3 * max_len // 4) if caches is not None else max_len
                caches, pending, cached = model.new_caches(), ids[-keep:], 0
            out = model(torch.tensor([pending], device=device), caches=caches)
            cached += len(pending)
        else:
            out = model(torch.tensor([ids[-max_len:]], device=device))
        logits = output_field(out, "logits")[0, -1]
        token = _next_token(logits, temperature=temperature, top_k=top_k, generator=generator, top_p=top_p)
        ids.append(token)
        new.append(token)
        pending = [token]
        if token == stop_id:
            break
    return new


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a run folder, a checkpoints folder, or a checkpoint folder itself."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"{path} does not exist (expected a run folder, e.g. runs/lm, or a checkpoint folder)"
        )
    for candidate in (path / "checkpoints", path):
        if (candidate / "latest").is_file():
            found = latest_checkpoint(candidate)
            if found is not None:
                return found
    if (path / CheckpointFiles.model).is_file():
        return path
    raise UserError(f"no checkpoint found at {path} (expected a run folder or a checkpoint folder)")


def peek_model_name(path: str | Path) -> str:
    """The registry name of the model in a run or checkpoint folder, read from its config.yaml (no weights)."""
    import yaml

    ckpt = resolve_checkpoint(path)
    try:
        saved = yaml.safe_load((ckpt / CheckpointFiles.config).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read {ckpt / CheckpointFiles.config}: {exc}") from exc
    return str(saved.get("model", "?"))


def load_trained(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Tokenizer, dict[str, Any]]:
    """Rebuild a trained model from its checkpoint (config.yaml + tokenizer.json + model.safetensors).

    Args:
        path: a run folder or a checkpoint folder.
        device: where to put the model.

    Returns:
        ``(model in eval mode, tokenizer, the saved configuration as a dict)``.
    """
    import yaml

    ckpt = resolve_checkpoint(path)
    saved = yaml.safe_load((ckpt / CheckpointFiles.config).read_text())
    tokenizer = load_tokenizer(ckpt / CheckpointFiles.tokenizer)
    spec = get_model_spec(saved["model"])
    model_config = resolve_model_config(spec, saved.get("preset"), saved.get("model_config") or {})
    model = build_model(spec, model_config, vocab_size=tokenizer.vocab_size)
    model.load_state_dict(load_weights(ckpt))
    return model.to(device).eval(), tokenizer, saved
