"""The OpenAI-compatible HTTP backend, on the official ``openai`` client: vLLM, llama.cpp's server, Ollama,
``testtime serve`` and hosted APIs.

- Base URL and key come from the arguments or the environment (``TESTTIME_OPENAI_BASE_URL`` /
  ``OPENAI_BASE_URL``, ``TESTTIME_OPENAI_API_KEY`` / ``OPENAI_API_KEY``); a local server without a key gets
  the placeholder ``"EMPTY"``. The key is never printed, logged or written to the cache (``repr`` masks it).
- Chat prompts use ``/chat/completions``, raw prompts ``/completions``.
- At most ``max_concurrency`` requests are in flight per event loop (an ``asyncio.Semaphore``).
- 429, 5xx, timeouts and connection errors are retried up to ``max_retries`` times with exponential backoff
  and jitter (``backoff * 2**attempt``, capped at ``max_backoff``; a ``Retry-After`` header wins). Other
  4xx errors are raised at once. The client's own retries are off so the policy is this one.
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
import os
import random
import threading
import weakref
from pathlib import Path
from typing import Any, Literal

from testtime.llm.protocol import BaseLLM, Completion, Prompt, SamplingParams, as_messages

__all__ = ["OpenAILLM"]

_RETRY_STATUS = {408, 409, 429}


class OpenAILLM(BaseLLM):
    """An OpenAI-compatible server behind the LLM protocol (see the module docstring).

    Args:
        model: the model name the server knows.
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (default: the environment, else OpenAI's).
        api_key: the key (default: the environment, else ``"EMPTY"``).
        max_concurrency: the most requests in flight at once (per event loop).
        max_retries: retries after a retryable failure.
        timeout: seconds per request before it counts as failed (and is retried).
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
        if messages is not None:
            body["messages"] = messages
            if params.logprobs:
                body["logprobs"] = True
        else:
            body["prompt"] = prompt
            if params.logprobs:
                body["logprobs"] = 1
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
        """One request with bounded concurrency and retries; returns the response as a dict."""
        import openai

        client, semaphore = self._client()
        create = client.chat.completions.create if endpoint == "chat" else client.completions.create
        attempt = 0
        while True:
            delay: float | None = None
            async with semaphore:
                try:
                    self.requests_sent += 1
                    response = await create(**body)
                    return response.model_dump()
                except openai.APIStatusError as exc:
                    if exc.status_code not in _RETRY_STATUS and exc.status_code < 500:
                        raise
                    if attempt >= self.max_retries:
                        raise
                    retry_after = (
                        exc.response.headers.get("retry-after") if exc.response is not None else None
                    )
                    try:
                        delay = float(retry_after) if retry_after is not None else None
                    except ValueError:
                        delay = None
                except (openai.APITimeoutError, openai.APIConnectionError):
                    if attempt >= self.max_retries:
                        raise
            if delay is None:
                delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
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
                choices += got[:1]
                hits += len(got[:1]) if hit else 0
        if hits:
            with self._usage_lock:
                self.usage.cache_hits += hits
        return choices[: params.n]

    async def _agenerate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        return list(await asyncio.gather(*(self._prompt_choices(p, params) for p in prompts)))


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
