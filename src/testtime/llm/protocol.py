"""The one LLM protocol every system samples text through: prompts and sampling parameters in, completions out.

A *prompt* is either raw text or a chat conversation (a list of ``{"role", "content"}`` messages). A call
takes a batch of prompts and one :class:`SamplingParams` and returns, per prompt, ``n`` :class:`Completion`
objects with their token counts and finish reasons. Every backend (local engine, OpenAI-compatible HTTP,
scripted fake) subclasses :class:`BaseLLM`, which does the accounting the Mind Evolution paper reports cost
with (calls, prompt tokens, completion tokens, wall time) and gives async use on top of sync use (or the
other way round for HTTP backends).

Accounting conventions: one *call* is one completion asked for (a prompt with ``n = 4`` is 4 calls, as
Mind Evolution counts one call per generated candidate); *prompt tokens* count the prompt once per call
(what independent requests cost, and what n > 1 emulation sends); *wall seconds* add up the duration of
each ``generate``/``agenerate`` (overlapping async calls each add their own duration).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, NamedTuple

__all__ = [
    "BaseLLM",
    "Completion",
    "ContinuationScore",
    "Message",
    "Prompt",
    "SamplingParams",
    "Usage",
    "as_messages",
]

Message = dict[str, str]
Prompt = str | Sequence[Message]
FinishReason = Literal["stop", "length"]


@dataclass(kw_only=True, frozen=True)
class SamplingParams:
    """How to sample (the OpenAI API's fields, with its defaults except ``max_tokens``).

    Attributes:
        n: completions per prompt.
        temperature: softmax temperature; 0 is greedy decoding.
        top_p: nucleus sampling threshold; 1 keeps the whole distribution.
        max_tokens: the most tokens per completion.
        stop: strings that end a completion (not included in its text).
        seed: makes sampling reproducible where the backend supports it.
        logprobs: also return the log-probability of each completion token (local and fake backends;
            HTTP servers that support it).
        top_logprobs: also return, per completion token, this many most likely tokens with their
            log-probabilities (0 to 20; None: none).
        logprobs_temperature: the returned log-probabilities are those of the temperature-scaled
            distribution ``softmax(logits / temperature)`` the token was drawn from (before top-p/top-k
            truncation), instead of the raw model's; RL importance ratios on temperature-scaled logits need
            them. Greedy decoding (temperature 0) reports raw log-probabilities. Local backend only.
        top_k: sample among the k most likely tokens (0: all); local backend and servers that accept it.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    logprobs_temperature: bool = False
    top_k: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in 0..20, got {self.top_logprobs}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    def with_(self, **changes: Any) -> SamplingParams:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


@dataclass(kw_only=True)
class Completion:
    """One generated answer.

    Attributes:
        text: the completion text (stop string excluded).
        finish_reason: ``"stop"`` (end-of-sequence token or stop string) or ``"length"`` (max_tokens).
        prompt_tokens: tokens in the prompt, as the backend counted them.
        completion_tokens: tokens generated.
        token_ids: the generated token ids, where the backend knows them.
        logprobs: per completion token, its log-probability under the model, when asked for.
        top_logprobs: per completion token, the most likely tokens as ``{token_id: logprob}`` (most likely
            first), when asked for.
    """

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None


class ContinuationScore(NamedTuple):
    """The log-probability of one continuation given a prompt (what cloze-style scoring returns).

    Attributes:
        logprob: ``sum_t log p(c_t | prompt, c_<t)`` over the continuation's tokens.
        num_tokens: how many tokens the continuation has.
    """

    logprob: float
    num_tokens: int


@dataclass(kw_only=True)
class Usage:
    """Cumulative cost of an LLM backend (see the module docstring for the conventions).

    Attributes:
        calls: completions asked for.
        requests: prompts submitted (a prompt with n > 1 is one request).
        prompt_tokens: prompt tokens, counted once per call.
        completion_tokens: tokens generated.
        wall_seconds: time spent inside generate/agenerate.
        cache_hits: completions answered from an on-disk cache (OpenAI backend).
    """

    calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_seconds: float = 0.0
    cache_hits: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __sub__(self, other: Usage) -> Usage:
        return Usage(**{k: getattr(self, k) - getattr(other, k) for k in asdict(self)})

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{k: getattr(self, k) + getattr(other, k) for k in asdict(self)})

    def as_dict(self) -> dict[str, float]:
        """The counters as a plain dict (with ``total_tokens``)."""
        return {**asdict(self), "total_tokens": self.total_tokens}


def as_messages(prompt: Prompt) -> list[Message] | None:
    """The chat messages of a prompt, or None for a raw-text prompt.

    Raises:
        ValueError: a conversation whose messages lack ``role`` or ``content`` strings.
    """
    if isinstance(prompt, str):
        return None
    messages = list(prompt)
    if not messages:
        raise ValueError("a chat prompt needs at least one message")
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"a chat message must be a dict with a 'role' string, got {message!r}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"a chat message needs a 'content' string, got {message!r}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


class BaseLLM:
    """A language model backend: subclasses implement ``_generate`` (sync) and/or ``_agenerate`` (async).

    Attributes:
        name: the model's name (for reports and the server's ``/v1/models``).
        usage: cumulative :class:`Usage`; read it before and after a run and subtract.
        defaults: sampling parameters used when a call passes none.
    """

    name: str = "llm"

    def __init__(self, *, defaults: SamplingParams | None = None) -> None:
        self.usage = Usage()
        self.defaults = defaults or SamplingParams()
        self._usage_lock = threading.Lock()

    # Subclasses implement at least one of these two.
    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        return asyncio.run(self._agenerate(prompts, params))

    async def _agenerate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        return await asyncio.to_thread(self._generate, prompts, params)

    def _params(self, params: SamplingParams | None, overrides: dict[str, Any]) -> SamplingParams:
        base = params or self.defaults
        return base.with_(**overrides) if overrides else base

    def _account(
        self, prompts: list[Prompt], params: SamplingParams, out: list[list[Completion]], seconds: float
    ):
        assert len(out) == len(prompts), "a backend must answer every prompt"
        with self._usage_lock:
            self.usage.requests += len(prompts)
            self.usage.wall_seconds += seconds
            for choices in out:
                assert len(choices) == params.n, "a backend must return n completions per prompt"
                self.usage.calls += len(choices)
                for choice in choices:
                    self.usage.prompt_tokens += choice.prompt_tokens
                    self.usage.completion_tokens += choice.completion_tokens

    def generate(
        self, prompts: Sequence[Prompt], params: SamplingParams | None = None, **overrides: Any
    ) -> list[list[Completion]]:
        """Complete a batch of prompts.

        Args:
            prompts: raw strings and/or chat conversations.
            params: sampling parameters (default: ``self.defaults``).
            **overrides: fields of :class:`SamplingParams` to change for this call (``temperature=0``).

        Returns:
            Per prompt, ``params.n`` completions.
        """
        params = self._params(params, overrides)
        batch = list(prompts)
        for prompt in batch:
            as_messages(prompt)  # validates chat prompts
        start = time.perf_counter()
        out = self._generate(batch, params) if batch else []
        self._account(batch, params, out, time.perf_counter() - start)
        return out

    async def agenerate(
        self, prompts: Sequence[Prompt], params: SamplingParams | None = None, **overrides: Any
    ) -> list[list[Completion]]:
        """The async form of :meth:`generate` (same arguments and result)."""
        params = self._params(params, overrides)
        batch = list(prompts)
        for prompt in batch:
            as_messages(prompt)
        start = time.perf_counter()
        out = await self._agenerate(batch, params) if batch else []
        self._account(batch, params, out, time.perf_counter() - start)
        return out

    def complete(self, prompt: Prompt, params: SamplingParams | None = None, **overrides: Any) -> str:
        """The text of one completion of one prompt (a convenience for scripts)."""
        return self.generate([prompt], params, **{**overrides, "n": 1})[0][0].text

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (HTTP clients); the default does nothing."""
