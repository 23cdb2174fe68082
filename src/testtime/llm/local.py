"""The local backend: a transformers causal LM and its tokenizer behind the LLM protocol, sampled by the engine.

Chat prompts go through the tokenizer's chat template (with the generation prompt); raw prompts are
tokenized as they are. Every call goes through one :class:`~testtime.llm.scheduler.Scheduler` (continuous
batching): calls from many threads and asyncio tasks, each with its own sampling parameters, share the
engine's running batch; a cancelled ``agenerate`` task frees its rows at the next step. ``n`` samples of a
prompt are ``n`` rows (prefilled once). With a seed, sample ``i`` of every prompt draws from its own
generator seeded ``seed + i``, so it does not depend on what else runs. Generation of a row ends at an
end-of-sequence token (the tokenizer's and the generation config's) or at a stop string, whose text is cut
off; the returned ``token_ids`` and ``logprobs`` still cover every generated token, the stop token or the
tokens of the stop string included.

Weight updates: ``with llm.updating_weights(): optimizer.step()`` pauses sampling between steps while the
block runs and makes the next step read the new weights; ``llm.weights_changed()`` declares a change
already made (see :mod:`testtime.llm.engine`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from testtime.llm.engine import DEFAULT_PREFILL_CHUNK, Engine, Row
from testtime.llm.protocol import BaseLLM, Completion, ContinuationScore, Prompt, SamplingParams, as_messages
from testtime.llm.scheduler import RequestHandle, Scheduler

__all__ = ["LocalLLM"]


class LocalLLM(BaseLLM):
    """A local model sampled by :class:`~testtime.llm.engine.Engine` through a continuous-batching scheduler.

    Args:
        model: a transformers causal LM (eval mode).
        tokenizer: its tokenizer (with a chat template for chat prompts).
        name: the model's name in reports and ``/v1/models``.
        max_batch_size: the most rows (prompts times n) decoding together (KV slots).
        defaults: sampling parameters for calls that pass none.
        lean: passed to the engine (None: lean forward when the architecture supports it).
        num_threads: torch threads while the engine runs (None: torch's setting).
        max_kv_tokens: bound on the KV cache in token columns (None: ``max_batch_size`` alone bounds it).
        prefill_chunk: the most prompt tokens the scheduler prefills per step, so that long prompts join
            the running batch in chunks instead of stalling it (None: whole prompts).
        quantize: weight-only ``"int4"`` or ``"int8"`` products for a bfloat16 model on the CPU (see
            :class:`~testtime.llm.engine.Engine`); None: the model's own dtype.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "local",
        max_batch_size: int = 32,
        defaults: SamplingParams | None = None,
        lean: bool | None = None,
        num_threads: int | None = None,
        max_kv_tokens: int | None = None,
        prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK,
        quantize: str | None = None,
    ) -> None:
        super().__init__(defaults=defaults)
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch_size = max_batch_size
        self.engine = Engine(model, lean=lean, num_threads=num_threads, quantize=quantize)
        self.scheduler = Scheduler(
            self.engine,
            max_batch_size=max_batch_size,
            max_kv_tokens=max_kv_tokens,
            prefill_chunk=prefill_chunk,
        )
        self._static_lock = threading.Lock()
        eos: set[int] = set()
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if isinstance(config_eos, int):
            eos.add(config_eos)
        elif config_eos is not None:
            eos.update(int(t) for t in config_eos)
        self.eos_token_ids = sorted(eos)

    @classmethod
    def from_name(
        cls,
        name: str | os.PathLike[str] | None = None,
        *,
        max_batch_size: int = 32,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> LocalLLM:
        """Load a model by name (see :func:`testtime.llm.loading.resolve_model`; None: embedded SmolLM2).

        Args:
            name: the model.
            max_batch_size: see the class.
            dtype: the weights' dtype (None: float32, or bfloat16 when ``quantize`` is given, which needs it;
                ``torch.bfloat16`` for bf16 decoding).
            **kwargs: the class's other arguments.
        """
        from testtime.llm.loading import load_model

        if dtype is None and kwargs.get("quantize") is not None:
            dtype = torch.bfloat16

        model, tokenizer = load_model(name) if dtype is None else load_model(name, dtype=dtype)
        label = "smollm2-135m-instruct" if name is None else os.fspath(name)
        return cls(model, tokenizer, name=label, max_batch_size=max_batch_size, **kwargs)

    @property
    def max_context(self) -> int | None:
        """The model's context length in tokens (prompt plus completion), when its config gives one."""
        return self.engine.max_context

    # ------------------------------------------------------------------ weights

    @contextlib.contextmanager
    def updating_weights(self) -> Iterator[None]:
        """Change the model's weights inside this block; sampling pauses between steps meanwhile.

        The running decoding step finishes first; no step runs until the block exits; the next step
        re-reads every weight. Do not sample from this LLM inside the block (it would wait forever).
        """
        with self.engine.updating_weights():
            yield

    def weights_changed(self) -> None:
        """Declare an in-place weight change already made; the next decoding step re-reads every weight."""
        self.engine.weights_changed()

    def close(self) -> None:
        """Stop the scheduler thread (queued and running requests are cancelled)."""
        self.scheduler.close()

    # ------------------------------------------------------------------ tokens

    def encode(self, prompt: Prompt) -> list[int]:
        """The token ids the model sees for a prompt (chat template applied to conversations)."""
        messages = as_messages(prompt)
        if messages is None:
            ids = self.tokenizer(prompt)["input_ids"]
        else:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        ids = list(ids)
        if not ids:
            raise ValueError("a prompt must encode to at least one token")
        return ids

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ generation

    def _stop_check(self, stop_strings: tuple[str, ...]) -> Callable[[list[int]], bool] | None:
        """``tokens -> bool``: whether the text of the last tokens contains a stop string (None: no strings)."""
        if not stop_strings:
            return None
        tail = max(len(s) for s in stop_strings) + 8

        def stop_check(tokens: list[int]) -> bool:
            text = self.tokenizer.decode(tokens[-tail:], skip_special_tokens=True)
            return any(s in text for s in stop_strings)

        return stop_check

    def rows(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        on_token: Callable[[Row], None] | None = None,
    ) -> list[Row]:
        """The engine rows of one encoded prompt (``params.n`` samples), ready for :meth:`submit`."""
        stop_check = self._stop_check(params.stop)
        rows = []
        for sample in range(params.n):
            generator = None
            if params.seed is not None:
                generator = torch.Generator(device=self.engine.device).manual_seed(params.seed + sample)
            rows.append(
                Row(
                    prompt=prompt_ids,
                    max_new_tokens=params.max_tokens,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k,
                    generator=generator,
                    stop_token_ids=frozenset(self.eos_token_ids),
                    stop_check=stop_check,
                    logprobs=params.logprobs,
                    logprobs_scaled=params.logprobs_temperature,
                    top_logprobs=params.top_logprobs or 0,
                    on_token=on_token,
                )
            )
        return rows

    def submit(self, rows: list[Row]) -> RequestHandle:
        """Queue rows with the scheduler (they join the running batch at its next step)."""
        return self.scheduler.submit(rows)

    def completion(self, row: Row, params: SamplingParams) -> Completion:
        """The :class:`Completion` of a finished row (stop strings cut from the text)."""
        tokens = row.tokens
        text = self._decode(tokens)
        reason = "length" if row.finish_reason in (None, "length", "cancelled") else "stop"
        cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        return Completion(
            text=text,
            finish_reason=reason,  # type: ignore[arg-type]
            prompt_tokens=len(row.prompt),
            completion_tokens=len(tokens),
            token_ids=list(tokens),
            logprobs=list(row.token_logprobs) if params.logprobs else None,
            top_logprobs=_tops(row, 0, len(tokens)) if params.top_logprobs is not None else None,
        )

    def _submit_all(self, encoded: list[list[int]], params: SamplingParams) -> list[RequestHandle]:
        handles: list[RequestHandle] = []
        try:
            for ids in encoded:
                handles.append(self.submit(self.rows(ids, params)))
        except BaseException:
            for handle in handles:
                handle.cancel()
            raise
        return handles

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        encoded = [self.encode(p) for p in prompts]
        handles = self._submit_all(encoded, params)
        try:
            done = [handle.future.result() for handle in handles]
        except BaseException:
            for handle in handles:
                handle.cancel()
            raise
        return [[self.completion(row, params) for row in rows] for rows in done]

    async def _agenerate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        encoded = await asyncio.to_thread(lambda: [self.encode(p) for p in prompts])
        handles = self._submit_all(encoded, params)
        try:
            done = [await asyncio.wrap_future(handle.future) for handle in handles]
        except BaseException:  # cancelled task: the rows leave the batch at the next step
            for handle in handles:
                handle.cancel()
            raise
        return [[self.completion(row, params) for row in rows] for rows in done]

    def generate_static(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """Static batching, the way this backend worked before the scheduler (kept as a benchmark baseline).

        The prompts' rows run as whole engine batches of ``max_batch_size`` rows, one batch at a time, no
        row joining a running batch; a call waits for every earlier one. Seeds are per batch
        (``seed + batch index``), so a seeded prompt's tokens depend on its batch. No usage accounting.
        """
        encoded = [self.encode(p) for p in prompts]
        rows = [(index, sample) for index in range(len(prompts)) for sample in range(params.n)]
        rows.sort(key=lambda r: -len(encoded[r[0]]))
        results: dict[tuple[int, int], Completion] = {}
        stop_check = self._stop_check(params.stop)
        for chunk_index, start in enumerate(range(0, len(rows), self.max_batch_size)):
            chunk = rows[start : start + self.max_batch_size]
            with self._static_lock:
                out = self.engine.generate(
                    [encoded[index] for index, _ in chunk],
                    max_new_tokens=params.max_tokens,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k,
                    seed=None if params.seed is None else params.seed + chunk_index,
                    stop_token_ids=self.eos_token_ids,
                    stop_check=None if stop_check is None else (lambda _row, tokens: stop_check(tokens)),
                    return_logprobs=params.logprobs,
                )
            for position, key in enumerate(chunk):
                row = Row(prompt=encoded[key[0]], max_new_tokens=params.max_tokens)
                row.tokens = out.tokens[position]
                row.token_logprobs = out.logprobs[position]
                row.finish_reason = out.finish_reasons[position]
                results[key] = self.completion(row, params)
        return [[results[(index, sample)] for sample in range(params.n)] for index in range(len(prompts))]

    # ------------------------------------------------------------------ scoring

    def score_tokens(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        """Log-probabilities of given completion tokens after given prompt tokens (see ``Engine.score``)."""
        out: list[list[float]] = []
        for start in range(0, len(prompt_ids), self.max_batch_size):
            out += self.engine.score(  # one step of the engine: interleaves with the scheduler's steps
                prompt_ids[start : start + self.max_batch_size],
                completion_ids[start : start + self.max_batch_size],
            )
        return out

    def score_continuations(self, prompt: str, continuations: Sequence[str]) -> list[ContinuationScore]:
        """Log-probability sums of continuations of a raw-text prompt (the tasks' ``ContinuationScorer``).

        Prompt and continuations are tokenized separately, without special tokens, and concatenated, as
        :class:`testtime.tasks.scoring.TransformersScorer` does; the engine scores all rows in one batch.
        """
        prompt_ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        option_ids = [list(self.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in continuations]
        if any(not ids for ids in option_ids):
            raise ValueError("every continuation must have at least one token")
        rows = self.score_tokens([prompt_ids] * len(option_ids), option_ids)
        return [ContinuationScore(float(sum(row)), len(row)) for row in rows]

    def score(self, prompts: list[Prompt], completions: list[str]) -> list[list[float]]:
        """Log-probabilities of the tokens of given completion texts after given prompts.

        The completion text is tokenized on its own (no special tokens added), so its tokens are those a
        model would have generated only if the tokenizer splits the joined text the same way; for RL on
        sampled completions pass their ``token_ids`` to :meth:`score_tokens` instead.
        """
        prompt_ids = [self.encode(p) for p in prompts]
        completion_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
        return self.score_tokens(prompt_ids, completion_ids)


def _tops(row: Row, start: int, end: int) -> list[dict[int, float]]:
    """The top log-probabilities of a row's tokens ``[start, end)`` (empty dicts when none were recorded)."""
    return [dict(row.tops[j]) if j < len(row.tops) else {} for j in range(start, end)]
