"""The OpenAI-compatible HTTP backend, on the official ``openai`` client: vLLM, llama.cpp's server, Ollama,
``testtime serve`` and hosted APIs.

- Base URL and key come from the arguments or the environment (``TESTTIME_OPENAI_BASE_URL`` /
  ``OPENAI_BASE_URL``, ``TESTTIME_OPENAI_API_KEY`` / ``OPENAI_API_KEY``); a local server without a key gets
  the placeholder ``"EMPTY"``. The key is never printed, logged or written to the cache (``repr`` masks it).
- Chat prompts use ``/chat/completions``, raw prompts ``/completions``.
- At most ``max_concurrency`` requests are in flight per event loop (an ``asyncio.Semaphore``).
- 429, 5xx, timeouts and connection errors are retried up to ``max_retries`` times with exponential backoff
  and jitter (``backoff * 2**attempt``, capped at ``max_backoff``); a ``Retry-After`` header in seconds
  replaces the computed delay, capped at ``max_backoff`` too (``3600`` or ``inf`` wait ``max_backoff``).
  Other 4xx errors are raised at once. The client's own retries are off so the policy is this one.
- ``timeout`` bounds each attempt as a whole (connection, a slowly trickling reply and all), not each read;
  ``deadline`` (optional) bounds one prompt's attempts and waits together.
- One prompt's failure does not discard the others: when some (not all) prompts of a call fail, the call
  raises :class:`PartialGenerationError`, which carries every finished prompt's completions and each
  failure; when all fail, the first failure is raised as it is.
- A response that is not an OpenAI JSON object, or has no choices, is an :class:`InvalidResponseError` that
  says what came back.
- ``n > 1``: asked for natively first; a server that returns fewer choices (llama.cpp) gets the missing
  ones as separate ``n = 1`` requests (seeds ``seed + i`` when a seed is set), and later calls emulate
  directly. ``n_mode`` forces either way.
- The optional on-disk cache (``cache_dir``) keys each response by a hash of the full request (base URL,
  endpoint, model, prompt, every sampling field, the emulated sample's index), so a repeated request is
  answered without reaching the server. With temperature > 0 that replays the first sample: vary ``seed``
  for fresh ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import threading
import weakref
from pathlib import Path
from typing import Any, Literal

from testtime.llm.protocol import BaseLLM, Completion, Prompt, SamplingParams, as_messages

__all__ = ["InvalidResponseError", "OpenAILLM", "PartialGenerationError", "RequestTimeoutError"]

_RETRY_STATUS = {408, 409, 429}


class InvalidResponseError(RuntimeError):
    """The server answered 2xx with something that is not a usable OpenAI response."""


class RequestTimeoutError(TimeoutError):
    """No complete response within the attempt's ``timeout`` (or the prompt's ``deadline``)."""


class PartialGenerationError(RuntimeError):
    """Some prompts of a call failed; the others' completions are kept.

    Attributes:
        completions: per prompt, its completions, or None where it failed.
        errors: the exception of each failed prompt, by prompt index.
    """

    def __init__(self, completions: list[list[Completion] | None], errors: dict[int, BaseException]) -> None:
        first = min(errors)
        super().__init__(
            f"{len(errors)} of {len(completions)} prompts failed (prompt {first}: "
            f"{type(errors[first]).__name__}: {errors[first]}); the others' completions are in .completions"
        )
        self.completions = completions
        self.errors = errors


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delay-seconds form; None for dates or junk; never negative)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


class OpenAILLM(BaseLLM):
    """An OpenAI-compatible server behind the LLM protocol (see the module docstring).

    Args:
        model: the model name the server knows.
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (default: the environment, else OpenAI's).
        api_key: the key (default: the environment, else ``"EMPTY"``).
        max_concurrency: the most requests in flight at once (per event loop).
        max_retries: retries after a retryable failure.
        timeout: seconds per attempt, the whole reply included, before it counts as failed (and is retried).
        deadline: seconds for one prompt's attempts and retry waits together (None: no bound beyond
            ``max_retries``).
        backoff: the first retry's delay in seconds; doubles per retry.
        max_backoff: the longest delay between retries.
        cache_dir: a directory for the on-disk response cache (None: no cache).
        n_mode: ``"auto"``, ``"native"`` (trust the server's n) or ``"emulate"`` (always n requests of n=1).
        defaults: sampling parameters for calls that pass none.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 120.0,
        deadline: float | None = None,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        cache_dir: str | os.PathLike[str] | None = None,
        n_mode: Literal["auto", "native", "emulate"] = "auto",
        defaults: SamplingParams | None = None,
    ) -> None:
        super().__init__(defaults=defaults)
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if timeout <= 0 or (deadline is not None and deadline <= 0):
            raise ValueError("timeout and deadline must be > 0")
        if n_mode not in ("auto", "native", "emulate"):
            raise ValueError(f"n_mode must be auto, native or emulate, got {n_mode!r}")
        self.name = model
        self.model = model
        self.base_url = (
            base_url
            or os.environ.get("TESTTIME_OPENAI_BASE_URL")
            or os.environ.get("OPENAI_BASE_URL")
            or None
        )
        self._api_key = (
            api_key
            or os.environ.get("TESTTIME_OPENAI_API_KEY")
            or os.environ.get("OPENAI_API_KEY")
            or "EMPTY"
        )
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.deadline = deadline
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.n_mode = n_mode
        self._native_n: bool | None = {"auto": None, "native": True, "emulate": False}[n_mode]
        self._loops: weakref.WeakKeyDictionary[Any, tuple[Any, asyncio.Semaphore]] = (
            weakref.WeakKeyDictionary()
        )
        self._loops_lock = threading.Lock()
        self.requests_sent = 0  # HTTP requests that reached the wire (retries included)

    def __repr__(self) -> str:
        return f"OpenAILLM(model={self.model!r}, base_url={self.base_url!r}, api_key='***')"

    # ------------------------------------------------------------------ plumbing

    def _client(self) -> tuple[Any, asyncio.Semaphore]:
        """The async client and concurrency semaphore of the running event loop."""
        from openai import AsyncOpenAI

        loop = asyncio.get_running_loop()
        with self._loops_lock:
            entry = self._loops.get(loop)
            if entry is None:
                client = AsyncOpenAI(
                    base_url=self.base_url, api_key=self._api_key, max_retries=0, timeout=self.timeout
                )
                entry = (client, asyncio.Semaphore(self.max_concurrency))
                self._loops[loop] = entry
        return entry

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        async def run() -> list[list[Completion]]:
            try:
                return await self._agenerate(prompts, params)
            finally:
                client, _ = self._loops.pop(asyncio.get_running_loop(), (None, None))
                if client is not None:
                    await client.close()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(run())
        # Called from inside a running loop (a notebook): run on a private loop in a thread.
        result: list[list[list[Completion]]] = []
        errors: list[BaseException] = []

        def target() -> None:
            try:
                result.append(asyncio.run(run()))
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]

    def _request_body(
        self, prompt: Prompt, params: SamplingParams, n: int, seed: int | None
    ) -> dict[str, Any]:
        messages = as_messages(prompt)
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
        }
        if n != 1:
            body["n"] = n
        if params.stop:
            body["stop"] = list(params.stop)
        if seed is not None:
            body["seed"] = seed
        if params.top_k:
            body["extra_body"] = {"top_k": params.top_k}  # vLLM, llama.cpp and testtime serve accept it
        if messages is not None:
            body["messages"] = messages
            if params.logprobs:
                body["logprobs"] = True
                if params.top_logprobs is not None:
                    body["top_logprobs"] = params.top_logprobs
        else:
            body["prompt"] = prompt
            if params.logprobs:
                body["logprobs"] = params.top_logprobs if params.top_logprobs is not None else 1
        return body

    def _cache_path(self, endpoint: str, body: dict[str, Any], sample: int) -> Path | None:
        if self.cache_dir is None:
            return None
        key = json.dumps(
            {"base_url": self.base_url, "endpoint": endpoint, "body": body, "sample": sample}, sort_keys=True
        )
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.cache_dir / digest[:2] / f"{digest}.json"

    async def _post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """One request with bounded concurrency, per-attempt timeout, retries; returns the response as a dict."""
        import openai

        client, semaphore = self._client()
        create = client.chat.completions.create if endpoint == "chat" else client.completions.create
        loop = asyncio.get_running_loop()
        end = None if self.deadline is None else loop.time() + self.deadline
        attempt = 0
        while True:
            delay: float | None = None
            async with semaphore:
                budget = self.timeout if end is None else min(self.timeout, end - loop.time())
                if budget <= 0:
                    raise RequestTimeoutError(f"no response within the deadline of {self.deadline} s")
                try:
                    self.requests_sent += 1
                    response = await asyncio.wait_for(create(**body), timeout=budget)
                    return _as_dict(response)
                except json.JSONDecodeError as exc:
                    raise InvalidResponseError(
                        f"the server sent a response that is not valid JSON ({exc})"
                    ) from None
                except openai.APIStatusError as exc:
                    if exc.status_code not in _RETRY_STATUS and exc.status_code < 500:
                        raise
                    if attempt >= self.max_retries:
                        raise
                    headers = exc.response.headers if exc.response is not None else {}
                    delay = _retry_after(headers.get("retry-after"))
                except (openai.APITimeoutError, openai.APIConnectionError, TimeoutError) as exc:
                    if attempt >= self.max_retries:
                        if isinstance(exc, TimeoutError) and not isinstance(exc, openai.APIError):
                            raise RequestTimeoutError(
                                f"no complete response within {budget:.3g} s ({attempt + 1} attempts)"
                            ) from None
                        raise
            if delay is None:
                delay = self.backoff * 2**attempt * (0.5 + random.random() / 2)
            delay = min(delay, self.max_backoff)
            if end is not None and loop.time() + delay >= end:
                raise RequestTimeoutError(f"no response within the deadline of {self.deadline} s")
            attempt += 1
            await asyncio.sleep(delay)

    async def _one(self, prompt: Prompt, params: SamplingParams, n: int, seed: int | None, sample: int):
        """Up to ``n`` choices for one prompt, from the cache or the server."""
        endpoint = "chat" if as_messages(prompt) is not None else "completions"
        body = self._request_body(prompt, params, n, seed)
        path = self._cache_path(endpoint, body, sample)
        if path is not None and path.is_file():
            data = json.loads(path.read_text())
            return _parse(data, endpoint), True
        data = await self._post(endpoint, body)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}-{threading.get_ident()}")
            tmp.write_text(json.dumps(data))
            tmp.replace(path)
        return _parse(data, endpoint), False

    async def _prompt_choices(self, prompt: Prompt, params: SamplingParams) -> list[Completion]:
        choices: list[Completion] = []
        hits = 0
        if params.n == 1 or self._native_n is not False:
            got, hit = await self._one(prompt, params, params.n, params.seed, 0)
            if not got:
                raise InvalidResponseError("the server returned a response with no choices")
            choices += got
            hits += len(got) if hit else 0
            if params.n > 1 and self._native_n is None:
                self._native_n = len(got) >= params.n
        missing = params.n - len(choices)
        if missing > 0:

            async def extra(i: int) -> tuple[list[Completion], bool]:
                seed = None if params.seed is None else params.seed + i
                return await self._one(prompt, params, 1, seed, i)

            results = await asyncio.gather(*(extra(i) for i in range(len(choices), params.n)))
            for got, hit in results:
                if not got:
                    raise InvalidResponseError("the server returned a response with no choices")
                choices += got[:1]
                hits += len(got[:1]) if hit else 0
        if hits:
            with self._usage_lock:
                self.usage.cache_hits += hits
        return choices[: params.n]

    async def _agenerate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        if params.logprobs_temperature:
            raise ValueError("logprobs_temperature is supported by the local backend only")
        results = await asyncio.gather(
            *(self._prompt_choices(p, params) for p in prompts), return_exceptions=True
        )
        errors: dict[int, BaseException] = {}
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):  # cancellation, interrupts: not a prompt's failure
                    raise result
                errors[index] = result
        if len(errors) == len(results):  # nothing to keep: the first failure as it is
            raise errors[0]
        if errors:
            kept = [None if i in errors else r for i, r in enumerate(results)]
            raise PartialGenerationError(kept, errors)  # type: ignore[arg-type]
        return list(results)  # type: ignore[arg-type]


def _as_dict(response: Any) -> dict[str, Any]:
    """The response as a dict, or an :class:`InvalidResponseError` saying what came back instead."""
    if isinstance(response, str | bytes):
        text = response.decode("utf-8", "replace") if isinstance(response, bytes) else response
        kind = "an empty response" if not text.strip() else f"a non-JSON response: {text[:200]!r}"
        raise InvalidResponseError(f"the server sent {kind}")
    if not hasattr(response, "model_dump"):
        raise InvalidResponseError(f"the server sent JSON that is not an object: {str(response)[:200]}")
    data = response.model_dump()
    if not isinstance(data.get("choices"), list):
        raise InvalidResponseError(f"the server's response has no 'choices' list: {json.dumps(data)[:200]}")
    return data


def _parse(data: dict[str, Any], endpoint: str) -> list[Completion]:
    """Completions from an OpenAI response dict (usage split over the choices; see the module docstring)."""
    usage = data.get("usage") or {}
    choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    total = int(usage.get("completion_tokens") or 0)
    share, extra = divmod(total, max(1, len(choices)))
    out = []
    for position, choice in enumerate(choices):
        if endpoint == "chat":
            text = (choice.get("message") or {}).get("content") or ""
            content = (choice.get("logprobs") or {}).get("content")
            logprobs = [float(t["logprob"]) for t in content] if content else None
        else:
            text = choice.get("text") or ""
            token_logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
            logprobs = [float(x) for x in token_logprobs] if token_logprobs else None
        reason = choice.get("finish_reason") or "stop"
        out.append(
            Completion(
                text=text,
                finish_reason="length" if reason == "length" else "stop",
                prompt_tokens=prompt_tokens,
                completion_tokens=share + (1 if position < extra else 0),
                logprobs=logprobs,
            )
        )
    return out
