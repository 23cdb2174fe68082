"""A batched sampling engine over a KV cache for transformers causal LMs, with a lean path for the Llama family.

For a 135M model on a CPU, a decoding step of ``model.generate`` costs its matrix products (MKL sgemm on
8-32 rows, which reads the weights at a fraction of the memory bandwidth) plus Python and framework overhead
(mask building, cache bookkeeping, logits processors). This engine runs the products through oneDNN on
weights packed once, and drops the overhead (measured in docs/benchmarks/generate.md):

- **Lean path** (Llama, Mistral without sliding window, Qwen2, SmolLM2: ``model.model.layers[i]`` with
  ``self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj`` as plain ``nn.Linear``, SiLU, RMSNorm, no
  q/k norms): its own forward reading the HF weights, a KV cache allocated once per call
  (``[layers, batch, kv_heads, max_len, head_dim]``), fused QKV and gate/up matrices, SDPA with the query
  heads of one KV group folded into the query length while decoding (no K/V repetition), a key-padding mask
  built once per call and sliced per step, RoPE tables computed by the model's own rotary module, logits of
  the last position only, finished rows dropped from the batch, repeated prompts prefilled once, and on
  CPUs with oneDNN every weight product (the LM head too) on a pre-packed copy of the weight.
- **Fallback path** (any other causal LM): the model's own forward with its ``DynamicCache``.

Both paths batch ragged prompts by left padding with position ids counted from each prompt's first real
token, the way ``generate`` does, so greedy output is token-identical to ``generate`` (up to float rounding
ties, which float64 removes; see tests/llm/test_engine.py).

Weight modifications: the lean path caches fused (and packed) copies of the weights. At the start of every
:meth:`Engine.generate` / :meth:`Engine.score` call it compares each source parameter's identity, storage
and in-place version counter with those it packed from (microseconds) and rebuilds the layers that changed,
so in-place edits (an optimizer step, SVF singular-value scaling written into the weights) and replaced
parameters are picked up without reloading. Parametrized weights (``torch.nn.utils.parametrize``) are
re-read on every call. Changes made *during* a call are not seen. :meth:`Engine.refresh_weights` forces a
re-read. Modules swapped for non-``nn.Linear`` ones (PEFT LoRA, custom SVF layers) make the engine use the
fallback path, which always runs the model as it is.

Log-probabilities are those of the model's raw distribution (temperature 1, no top-p), for the sampled
tokens as for given completions: the quantities a policy-gradient loss needs.

Shape legend: B batch rows, S new positions in this forward, T cached positions, L layers, H hidden size,
Nh query heads, Nk KV heads, G = Nh / Nk, D head dim, V vocabulary.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Engine", "GenerationResult", "lean_supported", "sample_next"]

_LEAN_MODEL_TYPES = ("llama", "mistral", "qwen2")


@dataclass(kw_only=True)
class GenerationResult:
    """What :meth:`Engine.generate` returns, one entry per input row.

    Attributes:
        tokens: the generated token ids (a stop token included when generation ended on it).
        logprobs: the raw-model log-probability of each generated token (empty lists unless asked for).
        finish_reasons: ``"stop"`` (a stop token or the stop callback) or ``"length"`` (max_new_tokens).
    """

    tokens: list[list[int]]
    logprobs: list[list[float]]
    finish_reasons: list[str]


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row from ``softmax(logits / temperature)`` restricted to the top-p nucleus.

    Args:
        logits: ``[B, V]`` next-token logits.
        temperature: 0 means greedy (argmax); otherwise the softmax temperature.
        top_p: keep the smallest set of most likely tokens whose probability reaches ``top_p``
            (Holtzman et al. 2020); 1 keeps all.
        generator: the random generator (for seeded sampling).

    Returns:
        ``[B]`` token ids.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature
    if top_p < 1.0:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the first one always stays).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        choice = torch.multinomial(sorted_logits.softmax(dim=-1), 1, generator=generator)
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(scaled.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch threads (process-wide), restoring the previous count afterwards."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _with_threads(method: Any) -> Any:
    """Run an :class:`Engine` method under the engine's ``num_threads``."""

    @functools.wraps(method)
    def wrapper(self: Engine, *args: Any, **kwargs: Any) -> Any:
        with _threads(self.num_threads):
            return method(self, *args, **kwargs)

    return wrapper


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary in at least float32 (float64 stays float64)."""
    return logits.log_softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


def _cache_kwargs(model: nn.Module, cache: Any) -> dict[str, Any]:
    """The KV-cache keyword of ``model.forward``: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    import inspect

    parameters = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in parameters else {"past_key_values": cache}


def _returned_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in float32 then cast back, as ``LlamaRMSNorm`` does: ``w * x / sqrt(mean(x^2) + eps)``."""
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in the half-split convention of HF Llama: ``x * cos + rotate_half(x) * sin`` (``x``: [B, h, S, D])."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def lean_supported(model: nn.Module) -> tuple[bool, str]:
    """Whether the lean Llama-family forward can run ``model`` exactly, and if not, why.

    Returns:
        ``(ok, reason)``; ``reason`` is empty when ``ok``.
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in _LEAN_MODEL_TYPES:
        return False, f"model type {getattr(config, 'model_type', None)!r} is not in {_LEAN_MODEL_TYPES}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return False, f"activation {config.hidden_act!r} is not silu"
    windowed = config.model_type == "mistral" or getattr(config, "use_sliding_window", False)
    if getattr(config, "sliding_window", None) and windowed:
        return False, "sliding-window attention"
    if getattr(config, "mlp_bias", False):
        return False, "MLP biases"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return False, "pretraining_tp > 1"
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(model, "lm_head") or not hasattr(inner, "rotary_emb"):
        return False, "not a model.model.layers / lm_head / rotary_emb layout"
    linear_names = ("q_proj", "k_proj", "v_proj", "o_proj")
    mlp_names = ("gate_proj", "up_proj", "down_proj")
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if attn is None or mlp is None:
            return False, "a layer without self_attn / mlp"
        if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
            return False, "q/k normalisation"
        modules = [getattr(attn, n, None) for n in linear_names] + [getattr(mlp, n, None) for n in mlp_names]
        if not all(_plain_linear(m) for m in modules):
            return False, "projections that are not plain nn.Linear (adapters or custom layers)"
    if type(model.lm_head) is not nn.Linear or type(inner.embed_tokens) is not nn.Embedding:
        return False, "custom embedding or head"
    return True, ""


def _plain_linear(module: Any) -> bool:
    """An ``nn.Linear`` that computes ``x W^T + b``, its weight possibly parametrized."""
    from torch.nn.utils import parametrize

    return type(module) is nn.Linear or (
        isinstance(module, nn.Linear) and parametrize.is_parametrized(module)
    )


def _signature(tensors: list[torch.Tensor]) -> tuple[tuple[int, int, int], ...]:
    """Identity, storage and in-place version of each tensor: changes whenever a weight is edited or replaced."""
    # Inference tensors keep no version counter: only a replaced tensor is noticed (refresh_weights() helps).
    return tuple((id(t), t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors)


def _onednn_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether oneDNN's pre-packed linear works here (x86 CPU builds, float32 / bfloat16)."""
    if device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return False
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    try:
        weight = torch.ones(4, 8, dtype=dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 2)
        out = torch.ops.mkldnn._linear_pointwise(
            torch.ones(2, 8, dtype=dtype), packed, None, "none", [None], ""
        )
    except (RuntimeError, AttributeError):
        return False
    return bool(torch.all(out == 8))


class _Linear:
    """``y = x W^T + b`` on one weight, through oneDNN with the weight pre-packed when available.

    For the small batches of decoding, MKL's sgemm (behind ``F.linear``) reaches a fraction of the memory
    bandwidth on this kind of CPU and its threads collapse when cores are oversubscribed; oneDNN's matmul on a
    weight packed once into its blocked layout reads the weight at close to full bandwidth (about 2.5x faster
    per decoding step in ``benchmarks/generate.py``). Results equal ``F.linear`` up to float rounding.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, prepack: bool) -> None:
        self.bias = None if bias is None else bias.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 8) if prepack else None
        self.weight = None if prepack else weight.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [None], "")
        return F.linear(x, self.weight, self.bias)


@dataclass
class _LayerWeights:
    """One decoder layer's weights as the lean forward uses them (QKV and gate/up fused)."""

    sources: list[torch.Tensor]
    signature: tuple[tuple[int, int, int], ...]
    parametrized: bool
    qkv: _Linear  # [(Nh + 2 Nk) D, H]
    o: _Linear  # [H, Nh D]
    gate_up: _Linear  # [2 I, H]
    down: _Linear  # [H, I]
    ln_attn: torch.Tensor
    ln_mlp: torch.Tensor


@dataclass
class _Batch:
    """The state of one generation call on the lean path."""

    cache_k: torch.Tensor  # [L, B, Nk, T_max, D]
    cache_v: torch.Tensor
    key_valid: torch.Tensor  # [B, T_max] bool: this cached position holds a real token
    rope_cos: torch.Tensor  # [T_max, D]
    rope_sin: torch.Tensor
    rows: list[int] = field(default_factory=list)


class Engine:
    """Batched sampling and scoring for a transformers causal LM (see the module docstring).

    Args:
        model: a transformers causal LM (``AutoModelForCausalLM``), in eval mode.
        lean: use the lean Llama-family forward: True requires it, False never, None when supported.
        compact_fraction: drop finished rows from the batch when at least this fraction of it has finished.
        prepack: run the lean path's matrix products through oneDNN on weights packed once per change
            (True requires it, False never, None when available: CPU, float32 or bfloat16). It keeps a packed
            copy of the weights (the model's size once more).
        num_threads: torch threads during this engine's calls (None: leave torch's setting). One thread is
            much faster than two on oversubscribed cores (see docs/benchmarks/generate.md). The setting is
            process-wide while a call runs.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lean: bool | None = None,
        compact_fraction: float = 0.25,
        prepack: bool | None = None,
        num_threads: int | None = None,
    ) -> None:
        self.model = model
        ok, reason = lean_supported(model)
        if lean and not ok:
            raise ValueError(f"the lean forward does not support this model: {reason}")
        self.lean = ok if lean is None else bool(lean)
        self.fallback_reason = reason
        self.compact_fraction = compact_fraction
        if num_threads is not None and num_threads < 1:
            raise ValueError("num_threads must be >= 1")
        self.num_threads = num_threads
        self._layers: list[_LayerWeights] = []
        self._head: tuple[tuple[tuple[int, int, int], ...], _Linear] | None = None
        available = self.lean and _onednn_available(self.device, self.dtype)
        if prepack and not available:
            raise ValueError("prepack=True needs the lean path on a CPU with oneDNN, in float32 or bfloat16")
        self.prepack = available if prepack is None else bool(prepack)
        if self.lean:
            config = model.config
            self.num_heads = config.num_attention_heads
            self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
            self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
            self.eps = config.rms_norm_eps
            self.scale = 1.0 / math.sqrt(self.head_dim)
            self._rope_cache: tuple[int, torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ weights

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The model's compute dtype (that of its embedding)."""
        return self.model.get_input_embeddings().weight.dtype

    @torch.inference_mode()
    def prepare(self) -> None:
        """Fuse and pack the weights now (the first call would otherwise do it); a no-op on the fallback path."""
        if self.lean:
            self._sync_weights()

    def refresh_weights(self) -> None:
        """Forget the fused and packed weights; the next call re-reads every parameter from the model."""
        self._layers = []
        self._head = None

    def _layer_sources(self, layer: nn.Module) -> tuple[list[torch.Tensor], bool]:
        attn, mlp = layer.self_attn, layer.mlp
        modules = [
            attn.q_proj,
            attn.k_proj,
            attn.v_proj,
            attn.o_proj,
            mlp.gate_proj,
            mlp.up_proj,
            mlp.down_proj,
        ]
        parametrized = any(torch.nn.utils.parametrize.is_parametrized(m) for m in modules)
        tensors = [m.weight for m in modules]
        tensors += [
            b
            for b in (attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias, attn.o_proj.bias)
            if b is not None
        ]
        tensors += [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
        return tensors, parametrized

    def _build_layer(self, layer: nn.Module) -> _LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        sources, parametrized = self._layer_sources(layer)
        biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
        wqkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
        w_gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
        bqkv = torch.cat([b.detach() for b in biases]) if all(b is not None for b in biases) else None
        if bqkv is None and any(b is not None for b in biases):
            raise ValueError("the lean forward needs all or none of q/k/v biases")
        pack = self.prepack
        return _LayerWeights(
            sources=sources,
            signature=_signature(sources),
            parametrized=parametrized,
            qkv=_Linear(wqkv, bqkv, prepack=pack),
            o=_Linear(attn.o_proj.weight, attn.o_proj.bias, prepack=pack),
            gate_up=_Linear(w_gate_up, None, prepack=pack),
            down=_Linear(mlp.down_proj.weight, None, prepack=pack),
            ln_attn=layer.input_layernorm.weight.detach(),
            ln_mlp=layer.post_attention_layernorm.weight.detach(),
        )

    def _sync_weights(self) -> None:
        """Re-fuse the layers whose parameters changed since the last call (cheap when none did)."""
        ok, reason = lean_supported(self.model)
        if not ok:
            raise RuntimeError(
                f"the model changed so that the lean forward no longer applies ({reason}); "
                "wrap it in a new Engine (it will use the fallback path)"
            )
        head = self.model.lm_head
        head_sources = [head.weight] + ([head.bias] if head.bias is not None else [])
        if self._head is None or self._head[0] != _signature(head_sources):
            self._head = (_signature(head_sources), _Linear(head.weight, head.bias, prepack=self.prepack))
        layers = self.model.model.layers
        if len(self._layers) != len(layers):
            self._layers = [self._build_layer(layer) for layer in layers]
            return
        for index, layer in enumerate(layers):
            cached = self._layers[index]
            if cached.parametrized:
                self._layers[index] = self._build_layer(layer)
                continue
            sources, _ = self._layer_sources(layer)
            if _signature(sources) != cached.signature:
                self._layers[index] = self._build_layer(layer)

    def _rope_tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos, sin``: ``[length, D]`` from the model's own rotary module (any RoPE scaling it implements)."""
        if self._rope_cache is None or self._rope_cache[0] < length:
            size = max(length, 256)
            positions = torch.arange(size, device=self.device)[None]
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            cos, sin = self.model.model.rotary_emb(probe, positions)
            self._rope_cache = (size, cos[0], sin[0])
        return self._rope_cache[1][:length], self._rope_cache[2][:length]

    # ------------------------------------------------------------------ lean forward

    def _forward_lean(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        batch: _Batch,
        start: int,
        *,
        last_only: bool,
    ) -> torch.Tensor:
        """Run the decoder over ``S`` new positions per row, writing K/V at cache slots ``[start, start + S)``.

        Args:
            ids: ``[B, S]`` token ids.
            positions: ``[B, S]`` RoPE positions.
            batch: the call's cache and masks.
            start: the first cache slot written.
            last_only: return hidden states of the last position only.

        Returns:
            ``[B, H]`` (``last_only``) or ``[B, S, H]`` final-normed hidden states.
        """
        model = self.model.model
        num_rows, length = ids.shape
        end = start + length
        nh, nk, d = self.num_heads, self.num_kv_heads, self.head_dim
        groups = nh // nk
        x = F.embedding(ids, model.embed_tokens.weight)
        cos = batch.rope_cos[positions].unsqueeze(1)  # [B, 1, S, D]
        sin = batch.rope_sin[positions].unsqueeze(1)
        valid = batch.key_valid[:, :end]
        if length == 1:
            mask = valid[:, None, None, :]  # [B, 1, 1, T]
        else:
            causal = torch.ones(length, end, dtype=torch.bool, device=ids.device).tril(diagonal=start)
            # A padding query may see nothing valid: let every query see itself so no softmax row is empty.
            diagonal = torch.zeros_like(causal)
            diagonal[:, start:end] = torch.eye(length, dtype=torch.bool, device=ids.device)
            mask = (causal[None] & valid[:, None, :]) | diagonal[None]
            mask = mask[:, None]  # [B, 1, S, T]
        q_size, kv_size = nh * d, nk * d
        for index, weights in enumerate(self._layers):
            h = _rms_norm(x, weights.ln_attn, self.eps)
            qkv = weights.qkv(h)
            q, k, v = qkv.split((q_size, kv_size, kv_size), dim=-1)
            q = q.view(num_rows, length, nh, d).transpose(1, 2)
            k = k.view(num_rows, length, nk, d).transpose(1, 2)
            v = v.view(num_rows, length, nk, d).transpose(1, 2)
            q = _rotate(q, cos, sin)
            k = _rotate(k, cos, sin)
            batch.cache_k[index, :, :, start:end] = k
            batch.cache_v[index, :, :, start:end] = v
            keys = batch.cache_k[index, :, :, :end]
            values = batch.cache_v[index, :, :, :end]
            if length == 1:
                # Fold the G query heads of each KV group into the query-length axis: [B, Nk, G, D].
                folded = q.reshape(num_rows, nk, groups, d)
                out = F.scaled_dot_product_attention(folded, keys, values, attn_mask=mask, scale=self.scale)
                out = out.reshape(num_rows, 1, nh * d)
            else:
                out = F.scaled_dot_product_attention(
                    q, keys, values, attn_mask=mask, scale=self.scale, enable_gqa=groups > 1
                )
                out = out.transpose(1, 2).reshape(num_rows, length, nh * d)
            x = x + weights.o(out)
            h = _rms_norm(x, weights.ln_mlp, self.eps)
            gate, up = weights.gate_up(h).chunk(2, dim=-1)
            x = x + weights.down(F.silu(gate) * up)
        if last_only:
            x = x[:, -1]
        return _rms_norm(x, model.norm.weight, self.eps)

    def _new_batch(self, num_rows: int, max_len: int) -> _Batch:
        config = self.model.config
        shape = (config.num_hidden_layers, num_rows, self.num_kv_heads, max_len, self.head_dim)
        cos, sin = self._rope_tables(max_len)
        return _Batch(
            # Uninitialised: a slot is read only after it was written (prefill writes every column, each
            # step its own), so no memory is touched for the unused tail of a long max_new_tokens.
            cache_k=torch.empty(shape, dtype=self.dtype, device=self.device),
            cache_v=torch.empty(shape, dtype=self.dtype, device=self.device),
            key_valid=torch.zeros(num_rows, max_len, dtype=torch.bool, device=self.device),
            rope_cos=cos,
            rope_sin=sin,
        )

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        assert self._head is not None, "_sync_weights runs before any forward"
        return self._head[1](hidden)

    # ------------------------------------------------------------------ public API

    @_with_threads
    @torch.inference_mode()
    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_token_ids: list[int] | tuple[int, ...] = (),
        stop_check: Any = None,
        return_logprobs: bool = False,
    ) -> GenerationResult:
        """Sample continuations of a batch of token-id prompts.

        Args:
            prompts: one list of token ids per row (ragged; each at least one token).
            max_new_tokens: the most tokens generated per row.
            temperature: 0 for greedy decoding, else the sampling temperature.
            top_p: nucleus sampling threshold (1 keeps the whole distribution).
            seed: seeds the sampler (None: the global torch generator).
            stop_token_ids: a row stops after generating one of these (it is kept in ``tokens``).
            stop_check: optional ``(row, tokens) -> bool`` called after each new token of an unfinished row;
                True stops the row (used for stop strings).
            return_logprobs: also return the raw log-probability of each generated token.

        Returns:
            A :class:`GenerationResult` with rows in the order of ``prompts``.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        num_rows = len(prompts)
        tokens: list[list[int]] = [[] for _ in range(num_rows)]
        logprobs: list[list[float]] = [[] for _ in range(num_rows)]
        reasons = ["length"] * num_rows
        if max_new_tokens == 0:
            return GenerationResult(tokens=tokens, logprobs=logprobs, finish_reasons=reasons)
        stops = torch.tensor(sorted(set(stop_token_ids)) or [-1], device=self.device)
        step = self._step_lean if self.lean else self._step_fallback
        # Repeated prompts (n samples of one prompt) are prefilled once and their cache rows copied.
        unique: dict[tuple[int, ...], int] = {}
        source = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
        distinct = [list(p) for p in unique]
        state = (
            self._prefill_lean(distinct, max_new_tokens) if self.lean else self._prefill_fallback(distinct)
        )
        if len(distinct) < num_rows:
            expand = torch.tensor(source, device=self.device)
            state = self._compact(state, expand)
            state["logits"] = state["logits"][expand]
        rows = torch.arange(num_rows)  # original row of each batch row
        alive = [True] * num_rows  # per batch row: still generating
        logits = state.pop("logits")
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        for t in range(max_new_tokens):
            next_tokens = sample_next(logits, temperature=temperature, top_p=top_p, generator=generator)
            if return_logprobs:
                chosen = _log_softmax(logits).gather(-1, next_tokens[:, None]).squeeze(-1)
                chosen_list = chosen.tolist()
            hit_stop = torch.isin(next_tokens, stops).tolist()
            token_list = next_tokens.tolist()
            for i, row in enumerate(rows.tolist()):
                if not alive[i]:
                    continue
                tokens[row].append(token_list[i])
                if return_logprobs:
                    logprobs[row].append(chosen_list[i])
                if hit_stop[i] or (stop_check is not None and stop_check(row, tokens[row])):
                    reasons[row] = "stop"
                    alive[i] = False
            num_alive = sum(alive)
            if num_alive == 0 or t == max_new_tokens - 1:
                break
            if len(alive) - num_alive >= max(1.0, self.compact_fraction * len(alive)):
                keep_list = [i for i, a in enumerate(alive) if a]
                keep = torch.tensor(keep_list, device=self.device)
                state = self._compact(state, keep)
                rows, next_tokens, lengths = rows[keep_list], next_tokens[keep], lengths[keep]
                alive = [True] * len(keep_list)
            logits = step(state, next_tokens, lengths + t)
        return GenerationResult(tokens=tokens, logprobs=logprobs, finish_reasons=reasons)

    # Lean path ----------------------------------------------------------------

    def _prefill_lean(self, prompts: list[list[int]], max_new_tokens: int) -> dict[str, Any]:
        self._sync_weights()
        width = max(len(p) for p in prompts)
        batch = self._new_batch(len(prompts), width + max_new_tokens)
        ids = torch.full((len(prompts), width), 0, dtype=torch.long)
        positions = torch.ones((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(prompt)
            positions[i, width - len(prompt) :] = torch.arange(len(prompt))
            batch.key_valid[i, width - len(prompt) : width] = True
        ids, positions = ids.to(self.device), positions.to(self.device)
        hidden = self._forward_lean(ids, positions, batch, 0, last_only=True)
        return {"batch": batch, "width": width, "offset": 0, "logits": self._logits(hidden)}

    def _step_lean(
        self, state: dict[str, Any], next_tokens: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        batch: _Batch = state["batch"]
        slot = state["width"] + state["offset"]
        batch.key_valid[:, slot] = True
        hidden = self._forward_lean(next_tokens[:, None], positions[:, None], batch, slot, last_only=True)
        state["offset"] += 1
        return self._logits(hidden)

    # Fallback path ---------------------------------------------------------------

    def _prefill_fallback(self, prompts: list[list[int]]) -> dict[str, Any]:
        from transformers import DynamicCache

        width = max(len(p) for p in prompts)
        pad = 0
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **_cache_kwargs(self.model, cache),
        )
        return {"cache": _returned_cache(out), "mask": mask, "logits": out.logits[:, -1]}

    def _step_fallback(
        self, state: dict[str, Any], next_tokens: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        mask = torch.cat([state["mask"], torch.ones_like(state["mask"][:, :1])], dim=-1)
        out = self.model(
            input_ids=next_tokens[:, None],
            attention_mask=mask,
            position_ids=positions[:, None],
            use_cache=True,
            **_cache_kwargs(self.model, state["cache"]),
        )
        state["mask"] = mask
        state["cache"] = _returned_cache(out)
        return out.logits[:, -1]

    def _compact(self, state: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
        """Select the batch rows ``keep`` of a generation state (finished rows leave; repeats copy rows)."""
        if "batch" in state:
            batch: _Batch = state["batch"]
            batch.cache_k = batch.cache_k[:, keep]
            batch.cache_v = batch.cache_v[:, keep]
            batch.key_valid = batch.key_valid[keep]
        else:
            state["mask"] = state["mask"][keep]
            state["cache"].batch_select_indices(keep)
        return state

    # Scoring ---------------------------------------------------------------------

    @_with_threads
    @torch.inference_mode()
    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[list[float]]:
        """Log-probabilities of given completions after their prompts, under the raw model (one forward pass).

        Args:
            prompts: one list of token ids per row (at least one token each).
            completions: the tokens to score after each prompt.

        Returns:
            Per row, ``log p(completion[j] | prompt, completion[:j])`` for every ``j``.
        """
        if len(prompts) != len(completions):
            raise ValueError("prompts and completions must have the same length")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        sequences = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
        width = max(len(s) for s in sequences)
        num_rows = len(sequences)
        ids = torch.zeros((num_rows, width), dtype=torch.long)
        mask = torch.zeros((num_rows, width), dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, width - len(seq) :] = torch.tensor(seq)
            mask[i, width - len(seq) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        if self.lean:
            self._sync_weights()
            batch = self._new_batch(num_rows, width)
            batch.key_valid.copy_(mask.bool())
            hidden = self._forward_lean(ids, positions, batch, 0, last_only=False)
            logits = self._logits(hidden)
        else:
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        logp = _log_softmax(logits)
        result = []
        for i, completion in enumerate(completions):
            if not completion:
                result.append([])
                continue
            first = width - len(completion)  # column of the first completion token
            targets = torch.tensor(completion, device=self.device)
            picked = logp[i, first - 1 : width - 1].gather(-1, targets[:, None]).squeeze(-1)
            result.append(picked.tolist())
        return result
