"""A batched sampling engine over a KV cache for transformers causal LMs, with a lean path for the Llama family.

For a 135M model on a CPU, a decoding step of ``model.generate`` costs its matrix products (MKL sgemm on
8-32 rows, which reads the weights at a fraction of the memory bandwidth) plus Python and framework overhead
(mask building, cache bookkeeping, logits processors). This engine runs the products through oneDNN on
weights packed once, and drops the overhead (measured in docs/benchmarks/generate.md):

- **Lean path** (Llama, Mistral without sliding window, Qwen2, SmolLM2: ``model.model.layers[i]`` with
  ``self_attn.{q,k,v,o}_proj`` and ``mlp.{gate,up,down}_proj`` as plain ``nn.Linear``, SiLU, RMSNorm, no
  q/k norms): its own forward reading the HF weights, with RMSNorm, RoPE and the token sampler of
  ``testtime.nn`` (RoPE in the activations' dtype, :func:`testtime.nn.fused.apply_rope_swapped`, equal to
  the plain form in float32 and rounding like transformers in bfloat16, with tables from the model's own
  rotary module, so any RoPE scaling it implements applies), fused QKV and gate/up matrices, SDPA with
  the query heads of one KV group folded into the query length while decoding (no K/V repetition), logits
  of the last position only, and on CPUs with oneDNN every weight product (the LM head too) on a
  pre-packed copy of the weight.
- **Fallback path** (any other causal LM): the model's own forward with its ``DynamicCache``.

**Rows join and leave between steps** (iteration-level scheduling, as in Orca, Yu et al. OSDI 2022, and
vLLM): a :class:`DecodeBatch` holds the running rows and their KV cache; :meth:`DecodeBatch.admit` queues
new rows and :meth:`DecodeBatch.step` samples one token for every decoding row, lets finished and cancelled
rows leave, and runs one forward for the others' new tokens together with the queued rows' prompt tokens
(identical prompts once, their cache rows copied). On the lean path that forward packs every row's new
tokens into one sequence (no padding between prompts of different lengths) and can take the prompts in
chunks of ``prefill_chunk`` tokens (chunked prefill, as in Sarathi-Serve and vLLM): a long prompt no longer
stalls the decoding rows for its whole prefill, and their tokens ride along with the chunk's weight reads.
The cache is a block of *slots* ``[L, R, Nk, C, D]``: each decoding row owns slot ``i < B`` and keeps its
tokens in columns ``[0, length)`` (right padding, a per-row write column), so a row can join at any step
without touching the others, and a leaving row's slot is refilled by moving the last row into it; a prompt
whose prefill spans several steps waits in a staging slot. Decoding attention reads each row's own columns
only, on the CPU in one call per row (batch-invariant; see DETERMINISTIC_ATTENTION), elsewhere in one
masked call over the longest row's columns unless a long row would make the others read mostly padding. Positions count from each prompt's first
token, as ``generate``'s left padding does, so greedy output is token-identical to ``generate`` (up to
float rounding ties, which float64 removes; tests/llm/test_engine.py), chunked or not.
On the fallback path rows join only an empty batch (the model's own cache is not built for joins) and are
prefilled whole when admitted; they still leave one by one. :meth:`Engine.generate` runs one such batch to
the end (prompts whole, no chunks); the scheduler in :mod:`testtime.llm.scheduler` feeds a long-lived one
from many callers.

Each row carries its own sampling parameters and ``torch.Generator`` (:mod:`testtime.nn.sampling`), so a
seeded row draws the same tokens alone or next to any other rows.

**Weight updates.** The lean path caches fused (and packed) copies of the weights. Declare every change:
``with engine.updating_weights(): optimizer.step()`` waits for the running step to end, holds further steps
while the block runs and makes the next step re-read every weight; :meth:`Engine.weights_changed` declares
a change already made (the next step re-reads). Fused optimizer steps and ``.data`` edits do not bump
torch's version counters, so only the explicit call is reliable. Without it, the engine still compares
each source parameter's identity, storage and version counter with those it packed from when rows are
prefilled (microseconds) and rebuilds the layers that changed; parametrized weights
(``torch.nn.utils.parametrize``) are re-read at every prefill. Modules swapped for non-``nn.Linear`` ones
(PEFT LoRA, custom SVF layers) make the engine use the fallback path, which always runs the model as it is;
``updating_weights`` still keeps its steps from running while the weights change.

**bfloat16.** A model loaded in bfloat16 runs in bfloat16 on both paths (the KV cache too; norms and
log-probabilities in float32). Its greedy tokens equal transformers' own bfloat16 ``generate``
(tests/llm/test_engine.py); they are not those of float32, and its log-probabilities differ from float32's
by bfloat16 rounding (measured in docs/fidelity/llm.md), so RL scores the policy in float32. It is faster
only where the hardware multiplies bfloat16 natively (AVX-512 BF16 / AMX with oneDNN, GPUs); on an
AVX2-only CPU oneDNN has no bfloat16 kernel here and it runs slower than float32.

**Weight-only int4 / int8** (``Engine(model16, quantize="int4")``, :mod:`testtime.nn.quant`): on a bfloat16
model on the CPU, decoding tokens multiply by integer weights (int4 in groups of 32 as in GGUF's Q4_1, the
LM head in int8), which makes single-stream decoding about 1.8x faster than bfloat16 (it is bound by the
bytes of weights read per token); prompt tokens multiply by a dense bfloat16 copy of the same dequantized
weights, where the integer kernels are slower. The integer kernels lose to bfloat16 beyond about 8
decoding rows. docs/llm.md gives the speed and accuracy measured.

Log-probabilities are those of the model's raw distribution (temperature 1, no top-p) unless a row asks for
the temperature-scaled one (``logprobs_scaled``); :meth:`Engine.score` gives raw log-probabilities of given
completions.

Shape legend: B running rows, R allocated slots, S new positions in this forward, T cached positions,
C cache columns per slot, L layers, H hidden size, Nh query heads, Nk KV heads, G = Nh / Nk, D head dim,
V vocabulary.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from testtime.llm.compat import cache_kwargs, returned_cache
from testtime.nn.fused import (
    apply_rope_swapped,
    layer_norm_gain,
    rms_norm_by_layer_norm,
    rms_norm_fused,
    signed_sin_table,
)
from testtime.nn.quant import GROUP, quantize_with_dense, quantized_products_available
from testtime.nn.sampling import sample

__all__ = ["DecodeBatch", "Engine", "GenerationResult", "Row", "lean_supported"]

_LEAN_MODEL_TYPES = ("llama", "mistral", "qwen2")


@dataclass(kw_only=True)
class GenerationResult:
    """What :meth:`Engine.generate` returns, one entry per input row.

    Attributes:
        tokens: the generated token ids (a stop token included when generation ended on it).
        logprobs: the log-probability of each generated token (empty lists unless asked for).
        finish_reasons: ``"stop"`` (a stop token or the stop callback) or ``"length"`` (max_new_tokens).
        top_logprobs: per generated token, the ``top_logprobs`` most likely ``(token, logprob)`` pairs
            (empty lists unless asked for).
    """

    tokens: list[list[int]]
    logprobs: list[list[float]]
    finish_reasons: list[str]
    top_logprobs: list[list[list[tuple[int, float]]]] = field(default_factory=list)


@dataclass(kw_only=True, eq=False)
class Row:
    """One sequence to generate, with its own sampling parameters, and its state while it runs.

    Attributes:
        prompt: the prompt's token ids (at least one).
        max_new_tokens: the most tokens to generate.
        temperature: 0 is greedy.
        top_p: nucleus threshold (1 keeps all).
        top_k: keep the k most likely tokens (0 keeps all).
        generator: this row's random generator (None: torch's global one).
        stop_token_ids: the row stops after generating one of these (kept in ``tokens``).
        stop_check: ``tokens -> bool`` called after each new token; True stops the row (stop strings).
        logprobs: record each token's log-probability.
        logprobs_scaled: of the temperature-scaled distribution instead of the raw one.
        top_logprobs: record this many most likely tokens per step (0: none).
        on_token: called (from the stepping thread) after each new token with the row; ``finish_reason``
            is already set when it is the last one.
        tag: the owner's label (the scheduler keeps its request and sample index here).
        tokens, token_logprobs, tops: what was generated so far.
        finish_reason: None while running; then ``"stop"``, ``"length"`` or ``"cancelled"``.
        cancelled: set (from any thread) to make the row leave at the next step.
    """

    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    generator: torch.Generator | None = None
    stop_token_ids: frozenset[int] = frozenset()
    stop_check: Callable[[list[int]], bool] | None = None
    logprobs: bool = False
    logprobs_scaled: bool = False
    top_logprobs: int = 0
    on_token: Callable[[Row], None] | None = None
    tag: Any = None
    tokens: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    tops: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False
    cached: int = 0  # tokens in this row's KV cache

    @property
    def span(self) -> int:
        """The most cache columns this row can need (prompt plus generated tokens)."""
        return len(self.prompt) + self.max_new_tokens


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
        self.pair = prepack and _one_row_differs(weight.shape[0], weight.shape[1], weight.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            if self.pair and x.dim() == 2 and x.shape[0] == 1:
                # See _one_row_differs: the row doubled sums like a row of any batch.
                both = torch.cat([x, x])
                return torch.ops.mkldnn._linear_pointwise(both, self.packed, self.bias, "none", [None], "")[
                    :1
                ]
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [None], "")
        return F.linear(x, self.weight, self.bias)


def _additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where ``visible``, -inf elsewhere, in ``dtype`` (SDPA's additive form of a boolean mask)."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(
        ~visible, float("-inf")
    )


_ONE_ROW_DIFFERS: dict[tuple[int, int, torch.dtype], bool] = {}


def _one_row_differs(out_features: int, in_features: int, dtype: torch.dtype) -> bool:
    """Whether oneDNN's packed product of this shape gives a row alone another result than in a batch.

    oneDNN runs a one-row product through another kernel than products of two or more rows, and for some
    shapes that kernel sums over K in another order (on the embedded model: the down projection, K = 1536;
    in float32 every row then differs from the same row in a batch, in bfloat16 about one in ten). Such
    products run a single row doubled, which costs a few percent at batch 1 and makes a seeded request's
    result independent of its batch (tests/llm/test_determinism.py). Probed once per shape and dtype with
    random data: 64 rows alone against the same 64 rows together.
    """
    key = (out_features, in_features, dtype)
    if key not in _ONE_ROW_DIFFERS:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(out_features, in_features, generator=generator).to(dtype)
        x = torch.randn(64, in_features, generator=generator).to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 8)
        with torch.inference_mode():
            together = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [None], "")
            alone = torch.cat(
                [
                    torch.ops.mkldnn._linear_pointwise(x[i : i + 1], packed, None, "none", [None], "")
                    for i in range(64)
                ]
            )
        _ONE_ROW_DIFFERS[key] = not torch.equal(alone, together)
    return _ONE_ROW_DIFFERS[key]


class _RowSplit:
    """How many leading rows of the running forward are decoding tokens (shared by an engine's products)."""

    decoding = 0


class _QuantizedLinear:
    """A weight-only int4 / int8 product (:mod:`testtime.nn.quant`) for decoding tokens, the same weights dense
    for prompt tokens.

    A decoding token's row multiplies through the integer kernel (fewer bytes to read per token); prompt
    tokens (prefill chunks, :meth:`Engine.score`) multiply by the dequantized weights in bfloat16, pre-packed
    for oneDNN when available, since torch's integer kernels expand the weights once per row and lose to a
    dense product beyond a few rows. The choice is made per row by what the row is, never by how many rows
    share the forward, and both kernels give a row the same result whatever the other rows: a seeded request
    decodes the same alone and in any batch. The cost is speed at large batches, where the integer kernel
    is slower than the dense one (docs/benchmarks/generate.md).
    """

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, *, kind: str, prepack: bool, split: _RowSplit
    ) -> None:
        self.small, dense = quantize_with_dense(weight, bias, kind=kind)  # type: ignore[arg-type]
        self.large = _Linear(dense, self.small.bias, prepack=prepack)
        self.split = split

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[N, K]``, its first ``split.decoding`` rows decoding tokens (any shape when none are)."""
        decoding = self.split.decoding
        if decoding == 0:
            return self.large(x)
        if decoding >= x.shape[0]:
            return self.small(x)
        return torch.cat([self.small(x[:decoding]), self.large(x[decoding:])])


@dataclass
class _LayerWeights:
    """One decoder layer's weights as the lean forward uses them (QKV and gate/up fused)."""

    sources: list[torch.Tensor]
    signature: tuple[tuple[int, int, int], ...]
    parametrized: bool
    qkv: _Linear | _QuantizedLinear  # [(Nh + 2 Nk) D, H]
    o: _Linear | _QuantizedLinear  # [H, Nh D]
    gate_up: _Linear | _QuantizedLinear  # [2 I, H]
    down: _Linear | _QuantizedLinear  # [H, I]
    ln_attn: torch.Tensor  # norm gains in the norms' compute dtype (float32, or float64 for float64 models)
    ln_mlp: torch.Tensor


@dataclass(eq=False)
class _Prefill:
    """Rows waiting for (or in) their prompt's prefill: one prompt, prefilled once for all of them."""

    rows: list[Row]
    done: int = 0  # prompt tokens already in the cache (in the staging slot while the prefill is partial)

    @property
    def prompt(self) -> list[int]:
        return self.rows[0].prompt


# Decoding attention reads a row's keys over a width rounded up to a multiple of this, the columns past the
# row's length masked: CPU SDPA's result for a row depends on how many columns it is given (its vectorised
# tail), not on masked columns beyond a multiple of 64, so a row attends the same alone and next to longer
# rows (per-request determinism).
ATTENTION_WIDTH_QUANTUM = 64

# Decoding attention runs row by row (each row over its own columns, see above) instead of one masked
# call over the longest row's columns when the masked call would carry more than this many padding columns
# per row: on a CPU one SDPA call costs about as much as 200 masked columns (see docs/benchmarks/serve.md).
PER_ROW_ATTENTION_PADDING = 192

# On the CPU with more than one thread, SDPA's result for a row also depends on how many rows share the call
# (its work split across threads; measured with 2 threads: the same row alone and in a batch of 2-8
# differed in 90% of float32 rows by float rounding and in 1 of 1,500 bfloat16 rows; with one thread
# never). For per-request determinism, decoding attention on the CPU therefore runs row by row, every
# row in its own one-row call exactly as it runs alone. False: batch rows into one masked call where
# PER_ROW_ATTENTION_PADDING allows (faster for many similar-length rows, not batch-invariant).
DETERMINISTIC_ATTENTION = True

#: Prompt tokens per forward when a batch prefills in chunks (the scheduler's default; see DecodeBatch).
DEFAULT_PREFILL_CHUNK = 256


class DecodeBatch:
    """The running rows of one :class:`Engine` and their KV cache (see the module docstring).

    Not thread-safe: one thread admits and steps (the scheduler's, or :meth:`Engine.generate`'s caller).

    On the lean path :meth:`admit` only queues rows; each :meth:`step` samples one token for every decoding
    row and then runs **one forward** for the decoding rows' new tokens together with up to
    ``prefill_chunk`` prompt tokens of the queued rows (chunked prefill: a long prompt is prefilled over
    several steps while the running rows keep decoding, and their tokens share the weight reads of the
    prefill). The forward packs every row's tokens into one sequence, so prompts of different lengths are
    not padded. A row whose prompt is complete joins the decoding rows; its first token is sampled at the
    next step. Chunks of a prompt always start at multiples of ``prefill_chunk`` from its first token
    whatever else runs, so a row's tokens do not depend on its neighbours.

    Args:
        engine: the engine whose model runs the rows.
        max_rows: the most rows at once (KV slots), decoding and queued for prefill together.
        max_kv_tokens: bound on ``rows x the longest row's prompt + max_new_tokens`` (the cache's size in
            token columns); None: no bound beyond ``max_rows``.
        prefill_chunk: the most prompt tokens prefilled per step (lean path); None: every queued prompt
            whole in the next step.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_rows: int,
        max_kv_tokens: int | None = None,
        prefill_chunk: int | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError("prefill_chunk must be >= 1 (or None)")
        self.engine = engine
        self.max_rows = max_rows
        self.max_kv_tokens = max_kv_tokens
        self.prefill_chunk = prefill_chunk
        self.rows: list[Row] = []  # decoding rows; lean: row i lives in cache slot i
        self.pending: deque[_Prefill] = deque()  # lean: rows queued for prefill, first come first served
        self.logits: torch.Tensor | None = None  # [B, V]: next-token logits of each decoding row
        self._k: torch.Tensor | None = None  # lean: [L, R, Nk, C, D]
        self._v: torch.Tensor | None = None
        # lean: [L, 1, Nk, C, D], the slot of a prompt whose prefill is partial
        self._stage: tuple[torch.Tensor, torch.Tensor] | None = None
        self._state: dict[str, Any] | None = None  # fallback: the model's cache and attention mask

    # ------------------------------------------------------------------ admission

    @property
    def num_pending(self) -> int:
        """Rows queued for prefill (lean path)."""
        return sum(len(group.rows) for group in self.pending)

    @property
    def active(self) -> bool:
        """Whether :meth:`step` has work: decoding rows or rows queued for prefill."""
        return bool(self.rows or self.pending)

    def fits(self, rows: list[Row]) -> bool:
        """Whether ``rows`` can join now (slots, the KV bound, and on the fallback path an empty batch)."""
        count = len(self.rows) + self.num_pending + len(rows)
        if count > self.max_rows or (self.active and not self.engine.lean):
            return False
        if self.max_kv_tokens is None:
            return True
        queued = [r for group in self.pending for r in group.rows]
        return count * max(r.span for r in self.rows + queued + rows) <= self.max_kv_tokens

    def fits_alone(self, rows: list[Row]) -> bool:
        """Whether ``rows`` could ever join (in an empty batch)."""
        if len(rows) > self.max_rows:
            return False
        return self.max_kv_tokens is None or len(rows) * max(r.span for r in rows) <= self.max_kv_tokens

    def admit(self, rows: list[Row]) -> list[Row]:
        """Add ``rows``; returns those finished at once (``max_new_tokens`` 0, or cancelled).

        Lean path: the rows are queued and prefilled by the next steps. Fallback path: they are prefilled
        now (into an empty batch). Identical prompts among ``rows`` are prefilled once and their cache copied.
        """
        done = [r for r in rows if r.max_new_tokens == 0 or r.cancelled]
        for row in done:
            row.finish_reason = "cancelled" if row.cancelled else "length"
        rows = [r for r in rows if r not in done]
        if not rows:
            return done
        if any(len(r.prompt) == 0 for r in rows):
            raise ValueError("every prompt needs at least one token")
        groups: dict[tuple[int, ...], _Prefill] = {}
        for row in rows:
            key = tuple(row.prompt)
            if key in groups:
                groups[key].rows.append(row)
            else:
                groups[key] = _Prefill([row])
        if self.engine.lean:
            self.pending.extend(groups.values())
            return done
        # Distinct prompts first (they are prefilled), then the repeats (their cache is copied).
        ordered = [g.rows[0] for g in groups.values()] + [r for g in groups.values() for r in g.rows[1:]]
        index = {key: i for i, key in enumerate(groups)}
        source = [index[tuple(r.prompt)] for r in ordered]
        logits = self._prefill_fallback(ordered, len(groups), source)
        for row in ordered:
            row.cached = len(row.prompt)
        self.rows += ordered
        self.logits = logits if self.logits is None else torch.cat([self.logits, logits])
        return done

    def _ensure_capacity(self, num_rows: int, columns: int) -> None:
        engine = self.engine
        have_rows = 0 if self._k is None else self._k.shape[1]
        have_cols = 0 if self._k is None else self._k.shape[3]
        if num_rows <= have_rows and columns <= have_cols:
            return
        new_rows = max(num_rows, have_rows, min(self.max_rows, 2 * have_rows))
        new_cols = 64 * math.ceil(max(columns, have_cols) / 64)
        config = engine.model.config
        shape = (config.num_hidden_layers, new_rows, engine.num_kv_heads, new_cols, engine.head_dim)
        # Zeros, not empty: masked-out columns still enter attention's product with weight 0, and 0 * NaN
        # (uninitialised memory) would be NaN.
        k = torch.zeros(shape, dtype=engine.dtype, device=engine.device)
        v = torch.zeros(shape, dtype=engine.dtype, device=engine.device)
        if self._k is not None and self._v is not None and self.rows:
            b = len(self.rows)
            used = max(r.cached for r in self.rows)
            k[:, :b, :, :used] = self._k[:, :b, :, :used]
            v[:, :b, :, :used] = self._v[:, :b, :, :used]
        self._k, self._v = k, v

    def _stage_for(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The staging slot of a partial prefill, with at least ``length`` columns."""
        if self._stage is None or self._stage[0].shape[3] < length:
            engine = self.engine
            config = engine.model.config
            columns = 64 * math.ceil(length / 64)
            shape = (config.num_hidden_layers, 1, engine.num_kv_heads, columns, engine.head_dim)
            self._stage = (
                torch.zeros(shape, dtype=engine.dtype, device=engine.device),
                torch.zeros(shape, dtype=engine.dtype, device=engine.device),
            )
        return self._stage

    def _prefill_fallback(self, rows: list[Row], num_unique: int, source: list[int]) -> torch.Tensor:
        from transformers import DynamicCache

        assert not self.rows, "the fallback path admits rows into an empty batch only"
        engine = self.engine
        distinct = [r.prompt for r in rows[:num_unique]]
        width = max(len(p) for p in distinct)
        ids = torch.zeros((num_unique, width), dtype=torch.long)
        mask = torch.zeros((num_unique, width), dtype=torch.long)
        for i, prompt in enumerate(distinct):
            ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
        ids, mask = ids.to(engine.device), mask.to(engine.device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        model = engine.model
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **cache_kwargs(model, DynamicCache(config=model.config)),
        )
        state = {"cache": returned_cache(out), "mask": mask}
        expand = torch.tensor(source, device=engine.device)
        if num_unique < len(rows):
            state["mask"] = state["mask"][expand]
            state["cache"].batch_select_indices(expand)
        self._state = state
        return out.logits[:, -1][expand]

    # ------------------------------------------------------------------ decoding

    def step(self) -> list[Row]:
        """Sample one token for every decoding row, let finished rows leave, run one forward for the others.

        On the lean path the forward also prefills the next chunk of the queued prompts (see the class).

        Returns:
            The rows that finished (their ``finish_reason`` set), in batch order; queued rows cancelled
            before their prefill completed come first.
        """
        done = self._drop_cancelled_pending()
        rows = self.rows
        last: torch.Tensor | None = None
        if rows:
            assert self.logits is not None and self.logits.shape[0] == len(rows)
            want_logprobs = any(r.logprobs for r in rows)
            num_top = max(r.top_logprobs for r in rows)
            out = sample(
                self.logits,
                temperature=[r.temperature for r in rows],
                top_p=[r.top_p for r in rows],
                top_k=[r.top_k for r in rows],
                generators=[r.generator for r in rows],
                logprobs=want_logprobs,
                logprobs_scaled=[r.logprobs_scaled for r in rows],
                num_top_logprobs=num_top,
            )
            tokens = out.tokens.tolist()
            logprobs = out.logprobs.tolist() if out.logprobs is not None else None
            top_ids = out.top_ids.tolist() if out.top_ids is not None else None
            top_values = out.top_logprobs.tolist() if out.top_logprobs is not None else None
            finished: list[int] = []
            for i, row in enumerate(rows):
                if row.cancelled:
                    row.finish_reason = "cancelled"
                    finished.append(i)
                    continue
                token = tokens[i]
                row.tokens.append(token)
                if row.logprobs and logprobs is not None:
                    row.token_logprobs.append(logprobs[i])
                if row.top_logprobs and top_ids is not None and top_values is not None:
                    k = row.top_logprobs
                    row.tops.append(list(zip(top_ids[i][:k], top_values[i][:k], strict=True)))
                if token in row.stop_token_ids or (row.stop_check is not None and row.stop_check(row.tokens)):
                    row.finish_reason = "stop"
                elif len(row.tokens) >= row.max_new_tokens:
                    row.finish_reason = "length"
                if row.finish_reason is not None:
                    finished.append(i)
                if row.on_token is not None:
                    row.on_token(row)
            done += [rows[i] for i in finished]
            last = out.tokens
            if finished:
                keep = self._remove(finished)
                last = last[keep]
        if self.engine.lean:
            self.logits = self._forward_step(last) if self.active else None
        elif self.rows:
            assert last is not None
            self.logits = self._decode(last)
        else:
            self.logits = None
            self._state = None
        return done

    def _drop_cancelled_pending(self) -> list[Row]:
        """Queued rows cancelled before their prefill completed leave (a group with none left is dropped)."""
        gone: list[Row] = []
        if not any(r.cancelled for group in self.pending for r in group.rows):
            return gone
        kept: deque[_Prefill] = deque()
        for group in self.pending:
            alive = [r for r in group.rows if not r.cancelled]
            for row in group.rows:
                if row.cancelled:
                    row.finish_reason = "cancelled"
                    gone.append(row)
            if alive:
                group.rows = alive
                kept.append(group)
        self.pending = kept
        return gone

    def cancel_all(self) -> list[Row]:
        """Mark every running and queued row cancelled and drop it (returns them)."""
        rows = list(self.rows) + [r for group in self.pending for r in group.rows]
        for row in rows:
            row.cancelled = True
            row.finish_reason = "cancelled"
        if self.rows:
            self._remove(list(range(len(self.rows))))
        self.pending.clear()
        self.logits = None
        self._state = None
        return rows

    def _remove(self, indices: list[int]) -> torch.Tensor:
        """Drop rows; returns the old batch positions of the remaining rows, in their new order."""
        device = self.engine.device
        positions = list(range(len(self.rows)))
        if self.engine.lean:
            assert self._k is not None and self._v is not None
            for i in sorted(indices, reverse=True):
                last = len(self.rows) - 1
                if i != last:  # the last row moves into the freed slot
                    n = self.rows[last].cached
                    self._k[:, i, :, :n] = self._k[:, last, :, :n]
                    self._v[:, i, :, :n] = self._v[:, last, :, :n]
                    self.rows[i] = self.rows[last]
                    positions[i] = positions[last]
                self.rows.pop()
                positions.pop()
        else:
            gone = set(indices)
            positions = [i for i in positions if i not in gone]
            self.rows = [self.rows[i] for i in positions]
            if self.rows and self._state is not None:
                keep = torch.tensor(positions, device=device)
                self._state["mask"] = self._state["mask"][keep]
                self._state["cache"].batch_select_indices(keep)
        return torch.tensor(positions, dtype=torch.long, device=device)

    def _forward_step(self, last: torch.Tensor | None) -> torch.Tensor:
        """Lean path: one forward of the decoding rows' last tokens and the next prefill chunk.

        Returns:
            The next logits ``[B, V]`` of the decoding rows, those whose prefill completed appended.
        """
        engine = self.engine
        device = engine.device
        b = len(self.rows)
        budget = self.prefill_chunk if self.prefill_chunk is not None else math.inf
        plan: list[tuple[_Prefill, int, int]] = []  # (group, first column, tokens) in this forward
        for group in self.pending:
            # A prompt's chunks start at multiples of prefill_chunk whatever else shares the forward; a
            # queued prompt whose next chunk does not fit in what is left of the budget waits a step.
            count = len(group.prompt) - group.done
            if self.prefill_chunk is not None:
                count = min(count, self.prefill_chunk - group.done % self.prefill_chunk)
            if count > budget:
                break
            plan.append((group, group.done, count))
            budget -= count
        new_rows = [r for g, start, count in plan if start + count == len(g.prompt) for r in g.rows]
        if plan:
            engine._sync_weights()
        # Columns for every row's whole span at once, so that the cache grows when rows join, not every 64
        # decoding steps of the longest row.
        spans = [max(r.span, r.cached + 1) for r in self.rows + new_rows]
        self._ensure_capacity(max(1, b + len(new_rows)), max(spans, default=1))
        assert self._k is not None and self._v is not None
        ids: list[torch.Tensor] = []
        positions: list[torch.Tensor] = []
        if b:
            assert last is not None
            ids.append(last)
            positions.append(torch.tensor([r.cached for r in self.rows], device=device))
        segments: list[tuple[torch.Tensor, torch.Tensor, int, int, int]] = []
        outputs = list(range(b))
        bases: list[tuple[_Prefill, int]] = []  # completing groups and their first slot
        slot, offset = b, b
        for group, start, count in plan:
            prompt = group.prompt
            ids.append(torch.tensor(prompt[start : start + count], device=device))
            positions.append(torch.arange(start, start + count, device=device))
            if start + count == len(prompt):  # completes: into its decoding slot (earlier chunks moved there)
                if start > 0:
                    assert self._stage is not None
                    self._k[:, slot, :, :start] = self._stage[0][:, 0, :, :start]
                    self._v[:, slot, :, :start] = self._stage[1][:, 0, :, :start]
                segments.append((self._k, self._v, slot, start, count))
                outputs.append(offset + count - 1)
                bases.append((group, slot))
                slot += len(group.rows)
            else:  # partial: the staging slot until it completes
                stage_k, stage_v = self._stage_for(len(prompt))
                segments.append((stage_k, stage_v, 0, start, count))
            offset += count
            group.done = start + count
        hidden = engine._forward_packed(
            torch.cat(ids),
            torch.cat(positions),
            self._k,
            self._v,
            num_decode=b,
            decode_lengths=[r.cached + 1 for r in self.rows],
            segments=segments,
            outputs=torch.tensor(outputs, dtype=torch.long, device=device),
        )
        logits = engine._logits(hidden)
        for row in self.rows:
            row.cached += 1
        if bases:
            expand = list(range(b))
            for index, (group, base) in enumerate(bases):
                n = len(group.prompt)
                for k in range(1, len(group.rows)):  # identical prompts: copy the first row's cache
                    self._k[:, base + k, :, :n] = self._k[:, base, :, :n]
                    self._v[:, base + k, :, :n] = self._v[:, base, :, :n]
                for row in group.rows:
                    row.cached = n
                    expand.append(b + index)
                self.pending.remove(group)
                self.rows += group.rows
            logits = logits[torch.tensor(expand, dtype=torch.long, device=device)]
        return logits

    def _decode(self, last: torch.Tensor) -> torch.Tensor:
        """Fallback path: one forward of the last sampled token of every row; returns the next logits."""
        engine = self.engine
        device = engine.device
        cached = torch.tensor([r.cached for r in self.rows], device=device)
        assert self._state is not None
        state = self._state
        mask = torch.cat([state["mask"], torch.ones_like(state["mask"][:, :1])], dim=-1)
        model = engine.model
        out = model(
            input_ids=last[:, None],
            attention_mask=mask,
            position_ids=cached[:, None],
            use_cache=True,
            **cache_kwargs(model, state["cache"]),
        )
        state["mask"] = mask
        state["cache"] = returned_cache(out)
        for row in self.rows:
            row.cached += 1
        return out.logits[:, -1]


class Engine:
    """Batched sampling and scoring for a transformers causal LM (see the module docstring).

    Args:
        model: a transformers causal LM (``AutoModelForCausalLM``), in eval mode, in float32, float64 or
            bfloat16 (bfloat16 runs the weight products in bfloat16, through oneDNN's AVX-512 BF16 / AMX
            kernels where the CPU has them).
        lean: use the lean Llama-family forward: True requires it, False never, None when supported.
        compact_fraction: accepted for compatibility and unused: finished rows leave at once.
        prepack: run the lean path's matrix products through oneDNN on weights packed once per change
            (True requires it, False never, None when available: CPU, float32 or bfloat16). It keeps a packed
            copy of the weights (the model's size once more).
        num_threads: torch threads during this engine's calls (None: leave torch's setting). One thread is
            much faster than two on oversubscribed cores (see docs/benchmarks/generate.md). The setting is
            process-wide while a call runs.
        quantize: weight-only integer products on the lean path (:mod:`testtime.nn.quant`): ``"int4"``
            (the layers in int4, groups of 32 inputs as in GGUF's Q4_1, the LM head in int8 per row) or
            ``"int8"`` (every product in int8 per row); None keeps the model's dtype. Needs a bfloat16 model
            on the CPU (the activations stay in bfloat16). Quantized copies are rebuilt when weights change,
            as the packed ones are; the model itself is not modified. See docs/llm.md for the accuracy cost.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        lean: bool | None = None,
        compact_fraction: float = 0.25,
        prepack: bool | None = None,
        num_threads: int | None = None,
        quantize: str | None = None,
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
        self._head: tuple[tuple[tuple[int, int, int], ...], _Linear | _QuantizedLinear] | None = None
        self._misc: tuple[tuple[tuple[int, int, int], ...], torch.Tensor, torch.Tensor] | None = None
        available = self.lean and _onednn_available(self.device, self.dtype)
        if prepack and not available:
            raise ValueError("prepack=True needs the lean path on a CPU with oneDNN, in float32 or bfloat16")
        self.prepack = available if prepack is None else bool(prepack)
        self.quantize = self._check_quantize(quantize)
        self._split = _RowSplit()  # quantized products: which rows of the running forward are decoding
        # The weight-update contract: steps run one at a time, never while weights change.
        self._condition = threading.Condition()
        self._busy = False
        self._pausers = 0
        self._stale = False
        self.weight_versions = 0  # how many declared weight changes the engine has taken in
        if self.lean:
            config = model.config
            self.num_heads = config.num_attention_heads
            self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
            self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
            self.eps = config.rms_norm_eps
            self.scale = 1.0 / math.sqrt(self.head_dim)
            self._rope_cache: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _check_quantize(self, kind: str | None) -> str | None:
        """``kind`` if this model and machine support it, else a ValueError that says why."""
        if kind is None:
            return None
        if kind not in ("int4", "int8"):
            raise ValueError(f"quantize must be 'int4', 'int8' or None, got {kind!r}")
        if not self.lean:
            raise ValueError(
                f"quantize={kind!r} needs the lean forward, which this model does not support "
                f"({self.fallback_reason})"
            )
        if self.device.type != "cpu" or self.dtype != torch.bfloat16:
            raise ValueError(
                f"quantize={kind!r} needs a bfloat16 model on the CPU, got {self.dtype} on {self.device} "
                "(load it with dtype=torch.bfloat16)"
            )
        if not quantized_products_available(kind):  # type: ignore[arg-type]
            raise ValueError(f"this torch build has no weight-only {kind} products on the CPU")
        broken = [name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if broken:
            raise ValueError(
                f"quantize={kind!r}: the model has NaN or infinite weights ({', '.join(broken[:3])}"
                f"{', ...' if len(broken) > 3 else ''}), which cannot be quantized"
            )
        if kind == "int4":
            config = self.model.config
            heads = config.num_attention_heads
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
            inputs = {"hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size}
            inputs["attention width (heads x head_dim)"] = heads * head_dim
            bad = [f"{name} {value}" for name, value in inputs.items() if value % GROUP]
            if bad:
                raise ValueError(
                    f"quantize='int4' needs every product's input size divisible by {GROUP}; "
                    f"this model has {', '.join(bad)} (use quantize='int8')"
                )
        return kind

    # ------------------------------------------------------------------ weights

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The model's compute dtype (that of its embedding)."""
        return self.model.get_input_embeddings().weight.dtype

    @property
    def max_context(self) -> int | None:
        """The model's context length (``max_position_embeddings``), when its config gives one."""
        value = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return int(value) if isinstance(value, int) else None

    @torch.inference_mode()
    def prepare(self) -> None:
        """Fuse and pack the weights now (the first call would otherwise do it); a no-op on the fallback path."""
        if self.lean:
            with self.computing():
                self._sync_weights()

    def refresh_weights(self) -> None:
        """Forget the fused and packed weights; the next step re-reads every parameter (:meth:`weights_changed`)."""
        self.weights_changed()

    def weights_changed(self) -> None:
        """Declare that the model's weights were changed in place: the next step re-reads all of them.

        Call it after every change made outside :meth:`updating_weights` (fused optimizer steps and
        ``.data`` edits are invisible to torch's version counters).
        """
        with self._condition:
            self._stale = True

    @contextlib.contextmanager
    def updating_weights(self) -> Iterator[None]:
        """Change the weights inside this block: steps pause (after the running one), then re-read them.

        Example::

            with engine.updating_weights():
                optimizer.step()
        """
        with self._condition:
            self._pausers += 1
            while self._busy:
                self._condition.wait()
        try:
            yield
        finally:
            with self._condition:
                self._pausers -= 1
                self._stale = True
                self._condition.notify_all()

    @contextlib.contextmanager
    def computing(self) -> Iterator[None]:
        """Hold the engine for one step (a prefill, a decoding step, a scoring pass).

        Steps of different callers run one at a time; a weight update in progress makes them wait, and a
        declared change is taken in before the step starts.
        """
        with self._condition:
            while self._busy or self._pausers:
                self._condition.wait()
            self._busy = True
            stale, self._stale = self._stale, False
        try:
            if stale:
                self.weight_versions += 1
                self._layers = []
                self._head = None
                self._misc = None
                if self.lean:
                    self._sync_weights()
            yield
        finally:
            with self._condition:
                self._busy = False
                self._condition.notify_all()

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
        linear = self._linear
        # Copies (not views) everywhere, so that a weight edited during a step cannot mix into it.
        return _LayerWeights(
            sources=sources,
            signature=_signature(sources),
            parametrized=parametrized,
            qkv=linear(wqkv, bqkv, self.quantize),
            o=linear(attn.o_proj.weight.detach().clone(), _clone(attn.o_proj.bias), self.quantize),
            gate_up=linear(w_gate_up, None, self.quantize),
            down=linear(mlp.down_proj.weight.detach().clone(), None, self.quantize),
            ln_attn=self._norm_gain(layer.input_layernorm.weight),
            ln_mlp=self._norm_gain(layer.post_attention_layernorm.weight),
        )

    def _linear(
        self, weight: torch.Tensor, bias: torch.Tensor | None, kind: str | None
    ) -> _Linear | _QuantizedLinear:
        """One weight product of the lean path: quantized (``kind``), oneDNN pre-packed, or ``F.linear``."""
        if kind is None:
            return _Linear(weight, bias, prepack=self.prepack)
        return _QuantizedLinear(weight, bias, kind=kind, prepack=self.prepack, split=self._split)

    def _norm_gain(self, weight: torch.Tensor) -> torch.Tensor:
        """An RMSNorm gain as :meth:`_norm` takes it: a float32 (float64) copy, doubled for the LayerNorm form."""
        if self.quantize is not None:
            return layer_norm_gain(weight)
        compute = torch.float64 if self.dtype == torch.float64 else torch.float32
        return weight.detach().to(compute, copy=True)

    def _norm(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """RMSNorm of the lean path: exact (:func:`rms_norm_fused`) unless products are quantized anyway.

        With quantized weights the LayerNorm form (:func:`rms_norm_by_layer_norm`), twice as fast for a few
        rows and equal up to the rounding of the variance, is used there: int4 weights move every output
        far more.
        """
        if self.quantize is None:
            return rms_norm_fused(x, gain, eps=self.eps)
        return rms_norm_by_layer_norm(x, gain, eps=self.eps)

    def _sync_weights(self) -> None:
        """Re-fuse the layers whose parameters changed since they were read (cheap when none did)."""
        ok, reason = lean_supported(self.model)
        if not ok:
            raise RuntimeError(
                f"the model changed so that the lean forward no longer applies ({reason}); "
                "wrap it in a new Engine (it will use the fallback path)"
            )
        head = self.model.lm_head
        head_sources = [head.weight] + ([head.bias] if head.bias is not None else [])
        if self._head is None or self._head[0] != _signature(head_sources):
            weight = head.weight.detach().clone()
            kind = None if self.quantize is None else "int8"  # the head in int8 whatever the layers
            self._head = (_signature(head_sources), self._linear(weight, _clone(head.bias), kind))
        misc = [self.model.model.embed_tokens.weight, self.model.model.norm.weight]
        if self._misc is None or self._misc[0] != _signature(misc):
            self._misc = (_signature(misc), misc[0].detach().clone(), self._norm_gain(misc[1]))
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
        """``cos, signed sin``: ``[length, D]`` from the model's own rotary module (any RoPE scaling it implements).

        In the model's dtype, both halves repeating the ``D/2`` angles, the sine's first half negated, for
        :func:`testtime.nn.fused.apply_rope_swapped`.
        """
        if self._rope_cache is None or self._rope_cache[0] < length:
            size = max(length, 256, 2 * (self._rope_cache[0] if self._rope_cache else 0))
            positions = torch.arange(size, device=self.device)[None]
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            cos, sin = self.model.model.rotary_emb(probe, positions)
            half = cos.shape[-1] // 2
            assert torch.equal(cos[0, :, :half], cos[0, :, half:]), "half-split RoPE tables expected"
            self._rope_cache = (size, cos[0], signed_sin_table(sin[0]))
        return self._rope_cache[1], self._rope_cache[2]

    # ------------------------------------------------------------------ lean forward

    def _forward_lean(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        *,
        write: torch.Tensor | None,
        mask: torch.Tensor,
        num_keys: int,
        last: torch.Tensor | None,
    ) -> torch.Tensor:
        """Run the decoder over ``S`` new positions per row, writing their K/V into the rows' cache slots.

        Args:
            ids: ``[B, S]`` token ids.
            positions: ``[B, S]`` RoPE positions.
            cache_k, cache_v: ``[L, B, Nk, C, D]`` the rows' slots.
            write: None (prefill: the new positions go to columns ``[0, S)``), or ``[B]`` one column per
                row (decoding, ``S = 1``).
            mask: ``[B, 1, S, T]`` (or ``[B, 1, 1, T]`` when ``S = 1``) which cached keys each query sees.
            num_keys: ``T``, the columns attended to (``[0, T)``).
            last: ``[B]`` the position whose hidden state to return per row, or None for all positions.

        Returns:
            ``[B, H]`` (``last`` given or ``S = 1``) or ``[B, S, H]`` final-normed hidden states.
        """
        num_rows, length = ids.shape
        nh, nk, d = self.num_heads, self.num_kv_heads, self.head_dim
        groups = nh // nk
        assert self._misc is not None, "_sync_weights runs before any forward"
        self._split.decoding = 0  # scoring: every position is a prompt token (dense products)
        x = F.embedding(ids, self._misc[1])
        table_cos, table_sin = self._rope_tables(int(positions.max()) + 1)
        cos = table_cos[positions].unsqueeze(2)  # [B, S, 1, D]
        sin = table_sin[positions].unsqueeze(2)
        q_size, kv_size = nh * d, nk * d
        rows = torch.arange(num_rows, device=ids.device)
        for index, weights in enumerate(self._layers):
            h = self._norm(x, weights.ln_attn)
            qkv = weights.qkv(h)
            # RoPE on the query and key heads together: [B, S, Nh + Nk, D].
            qk = apply_rope_swapped(qkv[..., : q_size + kv_size].view(num_rows, length, nh + nk, d), cos, sin)
            q = qk[:, :, :nh].transpose(1, 2)
            k = qk[:, :, nh:].transpose(1, 2)
            v = qkv[..., q_size + kv_size :].view(num_rows, length, nk, d).transpose(1, 2)
            layer_k, layer_v = cache_k[index], cache_v[index]  # [B, Nk, C, D]
            if write is None:
                layer_k[:, :, :length] = k
                layer_v[:, :, :length] = v
            else:
                layer_k[rows, :, write] = k[:, :, 0]
                layer_v[rows, :, write] = v[:, :, 0]
            keys, values = layer_k[:, :, :num_keys], layer_v[:, :, :num_keys]
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
            h = self._norm(x, weights.ln_mlp)
            gate, up = weights.gate_up(h).chunk(2, dim=-1)
            x = x + weights.down(F.silu(gate) * up)
        if last is not None:
            x = x[rows, last]
        elif length == 1:
            x = x[:, 0]
        return self._norm(x, self._misc[2])

    def _forward_packed(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        *,
        num_decode: int,
        decode_lengths: list[int],
        segments: list[tuple[torch.Tensor, torch.Tensor, int, int, int]],
        outputs: torch.Tensor,
    ) -> torch.Tensor:
        """Run the decoder over the packed new tokens of many rows, writing their K/V into the rows' caches.

        The first ``num_decode`` tokens are the decoding rows' last tokens (row ``i`` in cache slot ``i``,
        written at column ``decode_lengths[i] - 1``); the rest are prompt chunks, one per segment, in order.
        Matrix products, norms and RoPE run on all ``N`` tokens at once; attention runs per kind: the decoding
        rows together (each over its own columns) and each chunk causally over its row's cached columns.

        Args:
            ids: ``[N]`` token ids.
            positions: ``[N]`` RoPE positions.
            cache_k, cache_v: ``[L, R, Nk, C, D]`` the decoding rows' slots.
            num_decode: ``B``, the decoding rows.
            decode_lengths: per decoding row, its cached tokens after this forward.
            segments: per prompt chunk ``(cache_k, cache_v, slot, start, count)``: its tokens go to columns
                ``[start, start + count)`` of that slot of that cache, whose columns ``[0, start)`` hold the
                prompt's earlier chunks.
            outputs: the token indices whose final hidden state to return.

        Returns:
            ``[len(outputs), H]`` final-normed hidden states.
        """
        total = ids.shape[0]
        nh, nk, d = self.num_heads, self.num_kv_heads, self.head_dim
        groups = nh // nk
        b = num_decode
        assert self._misc is not None, "_sync_weights runs before any forward"
        # The first b rows (and the first b outputs, for the LM head after this) are decoding tokens.
        self._split.decoding = b
        x = F.embedding(ids, self._misc[1])
        top = max([n for n in decode_lengths] + [start + count for _, _, _, start, count in segments])
        table_cos, table_sin = self._rope_tables(top)
        cos = table_cos[positions].unsqueeze(1)  # [N, 1, D]
        sin = table_sin[positions].unsqueeze(1)  # signed (see _rope_tables)
        q_size, kv_size = nh * d, nk * d
        device = ids.device
        if b:
            rows = torch.arange(b, device=device)
            write = torch.tensor([n - 1 for n in decode_lengths], device=device)
            columns = cache_k.shape[3]
            quantum = ATTENTION_WIDTH_QUANTUM
            widths = [min(columns, quantum * math.ceil(n / quantum)) for n in decode_lengths]
            need = max(widths)
            # One call over the longest row's columns (the others masked), or one call per row over its
            # own columns when that would mostly read padding (CPU; see PER_ROW_ATTENTION_PADDING).
            per_row = (
                device.type == "cpu"
                and b > 1
                and (
                    DETERMINISTIC_ATTENTION
                    or b * max(decode_lengths) - sum(decode_lengths) > PER_ROW_ATTENTION_PADDING * b
                )
            )
            # Additive float masks, made once per step (SDPA converts a boolean one at every call).
            if per_row:
                row_masks = [
                    _additive_mask(torch.arange(w, device=device) < n, x.dtype)[None, None, None, :]
                    for n, w in zip(decode_lengths, widths, strict=True)
                ]
            else:
                lengths = torch.tensor(decode_lengths, device=device)
                visible = torch.arange(need, device=device)[None] < lengths[:, None]
                mask = _additive_mask(visible, x.dtype)[:, None, None, :]
        chunk_masks: list[torch.Tensor | None] = []
        for _, _, _, start, count in segments:
            if start == 0:
                chunk_masks.append(None)  # plain causal
            else:  # query j (column start + j) sees columns [0, start + j]
                columns = torch.arange(start + count, device=device)
                chunk_masks.append(
                    columns[None] <= torch.arange(start, start + count, device=device)[:, None]
                )
        for index, weights in enumerate(self._layers):
            h = self._norm(x, weights.ln_attn)
            qkv = weights.qkv(h)
            # RoPE on the query and key heads together: [N, Nh + Nk, D].
            qk = apply_rope_swapped(qkv[:, : q_size + kv_size].view(total, nh + nk, d), cos, sin)
            q, k = qk[:, :nh], qk[:, nh:]
            v = qkv[:, q_size + kv_size :].view(total, nk, d)
            pieces = []
            if b:
                layer_k, layer_v = cache_k[index], cache_v[index]  # [R, Nk, C, D]
                layer_k[rows, :, write] = k[:b]
                layer_v[rows, :, write] = v[:b]
                # Fold the G query heads of each KV group into the query-length axis: [B, Nk, G, D].
                folded = q[:b].view(b, nk, groups, d)
                if per_row:
                    out = torch.cat(
                        [
                            F.scaled_dot_product_attention(
                                folded[i : i + 1],
                                layer_k[i : i + 1, :, :w],
                                layer_v[i : i + 1, :, :w],
                                attn_mask=row_masks[i],
                                scale=self.scale,
                            )
                            for i, w in enumerate(widths)
                        ]
                    )
                else:
                    out = F.scaled_dot_product_attention(
                        folded, layer_k[:b, :, :need], layer_v[:b, :, :need], attn_mask=mask, scale=self.scale
                    )
                pieces.append(out.reshape(b, nh * d))
            offset = b
            for (seg_k, seg_v, slot, start, count), chunk_mask in zip(segments, chunk_masks, strict=True):
                end = offset + count
                seg_layer_k, seg_layer_v = seg_k[index], seg_v[index]
                seg_layer_k[slot, :, start : start + count] = k[offset:end].transpose(0, 1)
                seg_layer_v[slot, :, start : start + count] = v[offset:end].transpose(0, 1)
                out = F.scaled_dot_product_attention(
                    q[offset:end].transpose(0, 1)[None],  # [1, Nh, count, D]
                    seg_layer_k[slot : slot + 1, :, : start + count],
                    seg_layer_v[slot : slot + 1, :, : start + count],
                    attn_mask=chunk_mask,
                    is_causal=chunk_mask is None,
                    scale=self.scale,
                    enable_gqa=groups > 1,
                )
                pieces.append(out[0].transpose(0, 1).reshape(count, nh * d))
                offset = end
            x = x + weights.o(pieces[0] if len(pieces) == 1 else torch.cat(pieces))
            h = self._norm(x, weights.ln_mlp)
            gate, up = weights.gate_up(h).chunk(2, dim=-1)
            x = x + weights.down(F.silu(gate) * up)
        return self._norm(x[outputs], self._misc[2])

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
        top_k: int = 0,
        seed: int | None = None,
        stop_token_ids: list[int] | tuple[int, ...] = (),
        stop_check: Any = None,
        return_logprobs: bool = False,
        logprobs_scaled: bool = False,
        top_logprobs: int = 0,
    ) -> GenerationResult:
        """Sample continuations of a batch of token-id prompts (one :class:`DecodeBatch` run to the end).

        Args:
            prompts: one list of token ids per row (ragged; each at least one token).
            max_new_tokens: the most tokens generated per row.
            temperature: 0 for greedy decoding, else the sampling temperature.
            top_p: nucleus sampling threshold (1 keeps the whole distribution).
            top_k: keep the k most likely tokens (0 keeps all).
            seed: row ``i`` samples with its own generator seeded ``seed + i`` (None: the global generator).
            stop_token_ids: a row stops after generating one of these (it is kept in ``tokens``).
            stop_check: optional ``(row, tokens) -> bool`` called after each new token of an unfinished row;
                True stops the row (used for stop strings).
            return_logprobs: also return the log-probability of each generated token.
            logprobs_scaled: of the temperature-scaled distribution (default: the raw one).
            top_logprobs: also return this many most likely tokens per step.

        Returns:
            A :class:`GenerationResult` with rows in the order of ``prompts``.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        stops = frozenset(int(t) for t in stop_token_ids)
        rows = []
        for index, prompt in enumerate(prompts):
            generator = None
            if seed is not None:
                generator = torch.Generator(device=self.device).manual_seed(seed + index)
            check = None
            if stop_check is not None:
                check = functools.partial(stop_check, index)
            rows.append(
                Row(
                    prompt=list(prompt),
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=top_k,
                    generator=generator,
                    stop_token_ids=stops,
                    stop_check=check,
                    logprobs=return_logprobs,
                    logprobs_scaled=logprobs_scaled,
                    top_logprobs=top_logprobs,
                )
            )
        batch = DecodeBatch(self, max_rows=len(rows))
        with self.computing():
            batch.admit(rows)
        while batch.active:
            with self.computing():
                batch.step()
        return GenerationResult(
            tokens=[r.tokens for r in rows],
            logprobs=[r.token_logprobs for r in rows],
            finish_reasons=[r.finish_reason or "length" for r in rows],
            top_logprobs=[r.tops for r in rows],
        )

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
        device = self.device
        ids = torch.zeros((num_rows, width), dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, : len(seq)] = torch.tensor(seq)
        ids = ids.to(device)
        lengths = torch.tensor([len(s) for s in sequences], device=device)
        valid = torch.arange(width, device=device)[None] < lengths[:, None]  # right padding
        with self.computing():
            if self.lean:
                self._sync_weights()
                config = self.model.config
                shape = (config.num_hidden_layers, num_rows, self.num_kv_heads, width, self.head_dim)
                cache_k = torch.empty(shape, dtype=self.dtype, device=device)
                cache_v = torch.empty(shape, dtype=self.dtype, device=device)
                causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
                mask = (causal[None] & valid[:, None, :]) | torch.eye(width, dtype=torch.bool, device=device)
                positions = torch.arange(width, device=device).expand(num_rows, width)
                hidden = self._forward_lean(
                    ids,
                    positions,
                    cache_k,
                    cache_v,
                    write=None,
                    mask=mask[:, None],
                    num_keys=width,
                    last=None,
                )
                if width == 1:
                    hidden = hidden[:, None]
                logits = self._logits(hidden)
            else:
                mask = valid.long()
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        logp = _log_softmax(logits)
        result = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            if not completion:
                result.append([])
                continue
            first = len(prompt)  # column of the first completion token
            targets = torch.tensor(completion, device=device)
            picked = logp[i, first - 1 : first - 1 + len(completion)].gather(-1, targets[:, None]).squeeze(-1)
            result.append(picked.tolist())
        return result


def _clone(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().clone()
