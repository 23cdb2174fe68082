"""``testtime serve``: an OpenAI-compatible HTTP server (FastAPI) in front of a local backend.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /health``.
Concurrent requests are batched: a worker thread takes every request that arrives within ``max_wait_s`` of
the first, groups them by sampling parameters and runs each group as one engine batch. ``stream: true`` is
answered as server-sent events, with each choice's whole text in one chunk (generation is not incremental).

Bad requests get a 4xx in OpenAI's error format, never a crash or a hang: malformed JSON or fields (400),
a missing or wrong key when the server has one (401), an unknown model (404), a body over
``max_body_bytes`` (413), more than ``max_tokens_limit`` tokens, ``max_n`` choices or ``max_prompt_tokens``
prompt tokens (400). FastAPI and uvicorn are imported only when an app is built.
"""

import asyncio
import concurrent.futures
import contextlib
import hmac
import json
import queue
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from testtime.llm.local import LocalLLM
from testtime.llm.protocol import Completion, SamplingParams

__all__ = ["Batcher", "ServerLimits", "create_app"]


@dataclass(kw_only=True)
class ServerLimits:
    """What a request may ask for; more gets a 4xx.

    Attributes:
        max_tokens_limit: the largest ``max_tokens``.
        max_n: the largest ``n``.
        max_prompt_tokens: the longest prompt in tokens.
        max_prompts: the most prompts in one ``/v1/completions`` request.
        max_rows: the most completions (prompts times n) in one request.
        max_body_bytes: the largest request body.
        default_max_tokens: ``max_tokens`` when a request gives none.
    """

    max_tokens_limit: int = 4096
    max_n: int = 64
    max_prompt_tokens: int = 8192
    max_prompts: int = 256
    max_rows: int = 512
    max_body_bytes: int = 4 * 1024 * 1024
    default_max_tokens: int = 256


class Batcher:
    """Collects concurrent requests for a local backend and runs them as shared engine batches.

    Args:
        llm: the backend.
        max_wait_s: how long the first request of a batch waits for others.
    """

    def __init__(self, llm: LocalLLM, *, max_wait_s: float = 0.01) -> None:
        self.llm = llm
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="testtime-batcher", daemon=True)
        self.batches_run = 0  # engine calls made
        self.requests_seen = 0  # requests submitted
        self._thread.start()

    def submit(self, prompts: list[Any], params: SamplingParams) -> concurrent.futures.Future:
        """Queue prompts; the future resolves to their completions (``n`` per prompt)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.requests_seen += 1
        self._queue.put((prompts, params, future))
        return future

    def close(self) -> None:
        """Stop the worker after the queued requests."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            deadline = time.monotonic() + self.max_wait_s
            stop = False
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                items.append(item)
            groups: dict[SamplingParams, list[Any]] = defaultdict(list)
            for item in items:
                groups[item[1]].append(item)
            for params, group in groups.items():
                prompts = [p for prompts, _, _ in group for p in prompts]
                try:
                    out = self.llm.generate(prompts, params)
                except Exception as exc:  # the requests fail, the server keeps serving
                    for _, _, future in group:
                        future.set_exception(exc)
                    continue
                self.batches_run += 1
                start = 0
                for prompts_i, _, future in group:
                    future.set_result(out[start : start + len(prompts_i)])
                    start += len(prompts_i)
            if stop:
                return


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": kind, "param": None, "code": status}},
    )


def create_app(
    llm: LocalLLM,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    max_wait_s: float = 0.01,
) -> Any:
    """Build the FastAPI app serving ``llm``.

    Args:
        llm: the local backend.
        model_name: the model id clients must ask for (default ``llm.name``).
        api_key: when set, requests need ``Authorization: Bearer <api_key>``.
        limits: request limits.
        max_wait_s: how long a request waits for others to share its batch.

    Returns:
        The ``FastAPI`` application (its ``state.batcher`` is the :class:`Batcher`).
    """
    from typing import Literal

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or ServerLimits()
    name = model_name or llm.name
    batcher = Batcher(llm, max_wait_s=max_wait_s)
    created = int(time.time())

    class ContentPart(BaseModel):
        model_config = ConfigDict(extra="ignore")
        type: str = "text"
        text: str = ""

    class ChatMessage(BaseModel):
        model_config = ConfigDict(extra="ignore")
        role: Literal["system", "user", "assistant", "developer", "tool"]
        content: str | list[ContentPart]

        def text(self) -> str:
            if isinstance(self.content, str):
                return self.content
            return "".join(part.text for part in self.content if part.type == "text")

    class Common(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str
        n: int = Field(1, ge=1)
        temperature: float = Field(1.0, ge=0.0, le=2.0)
        top_p: float = Field(1.0, gt=0.0, le=1.0)
        max_tokens: int | None = Field(None, ge=0)
        max_completion_tokens: int | None = Field(None, ge=0)
        stop: str | list[str] | None = None
        seed: int | None = None
        stream: bool = False

    class ChatRequest(Common):
        messages: list[ChatMessage] = Field(min_length=1)
        logprobs: bool = False

    class CompletionRequest(Common):
        prompt: str | list[str]
        logprobs: int | None = Field(None, ge=0, le=5)
        echo: bool = False

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        batcher.close()

    app = FastAPI(
        title="testtime", description="OpenAI-compatible server for a local testtime model", lifespan=lifespan
    )
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error.get('loc', ()) if p != 'body') or 'body'}: {error.get('msg')}"
            for error in exc.errors()
        )
        return _error(400, f"invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            return _error(413, f"request body of {length} bytes exceeds the limit of {limits.max_body_bytes}")
        if api_key is not None and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error(
                    401, "missing or wrong API key (send 'Authorization: Bearer <key>')", "auth_error"
                )
        return await call_next(request)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "requests": batcher.requests_seen, "batches": batcher.batches_run}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "testtime"}],
        }

    def check(request: Common) -> SamplingParams | JSONResponse:
        if request.model != name:
            return _error(
                404, f"model {request.model!r} not found; this server serves {name!r}", "not_found_error"
            )
        max_tokens = request.max_completion_tokens or request.max_tokens
        if max_tokens is None:
            max_tokens = min(limits.default_max_tokens, limits.max_tokens_limit)
        if max_tokens > limits.max_tokens_limit:
            return _error(
                400, f"max_tokens={max_tokens} exceeds this server's limit of {limits.max_tokens_limit}"
            )
        if request.n > limits.max_n:
            return _error(400, f"n={request.n} exceeds this server's limit of {limits.max_n}")
        stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
        try:
            return SamplingParams(
                n=request.n,
                temperature=request.temperature,
                top_p=request.top_p,
                max_tokens=max_tokens,
                stop=tuple(s for s in stop if s),
                seed=request.seed,
                logprobs=bool(getattr(request, "logprobs", False)),
            )
        except ValueError as exc:
            return _error(400, str(exc))

    def encode_all(prompts: list[Any]) -> list[int] | JSONResponse:
        lengths = []
        for prompt in prompts:
            try:
                ids = llm.encode(prompt)
            except ValueError as exc:
                return _error(400, str(exc))
            if len(ids) > limits.max_prompt_tokens:
                return _error(
                    400,
                    f"prompt of {len(ids)} tokens exceeds this server's limit of {limits.max_prompt_tokens}",
                )
            lengths.append(len(ids))
        return lengths

    def token_strings(ids: list[int]) -> list[str]:
        return [llm.tokenizer.decode([i]) for i in ids]

    def usage(prompt_lengths: list[int], choices: list[Completion]) -> dict[str, int]:
        prompt = sum(prompt_lengths)
        completion = sum(c.completion_tokens for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def sse(chunks: list[dict[str, Any]]) -> StreamingResponse:
        def events() -> Any:
            for chunk in chunks:
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest) -> Any:
        params = check(request)
        if isinstance(params, JSONResponse):
            return params
        conversation = [{"role": m.role, "content": m.text()} for m in request.messages]
        lengths = encode_all([conversation])
        if isinstance(lengths, JSONResponse):
            return lengths
        result = await asyncio.wrap_future(batcher.submit([conversation], params))
        choices = result[0]
        ident, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            chunks = []
            for i, c in enumerate(choices):
                delta = {"role": "assistant", "content": c.text}
                chunks.append(
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": now,
                        "model": name,
                        "choices": [{"index": i, "delta": delta, "finish_reason": None}],
                    }
                )
                chunks.append(
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": now,
                        "model": name,
                        "choices": [{"index": i, "delta": {}, "finish_reason": c.finish_reason}],
                    }
                )
            return sse(chunks)
        body = []
        for i, c in enumerate(choices):
            logprobs = None
            if params.logprobs and c.logprobs is not None and c.token_ids is not None:
                logprobs = {
                    "content": [
                        {"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
                        for t, lp in zip(token_strings(c.token_ids), c.logprobs, strict=True)
                    ]
                }
            body.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "finish_reason": c.finish_reason,
                    "logprobs": logprobs,
                }
            )
        return {
            "id": ident,
            "object": "chat.completion",
            "created": now,
            "model": name,
            "choices": body,
            "usage": usage(lengths, choices),
        }

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest) -> Any:
        params = check(request)
        if isinstance(params, JSONResponse):
            return params
        if request.echo:
            return _error(400, "echo is not supported")
        prompts = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
        if not prompts or len(prompts) > limits.max_prompts:
            return _error(400, f"give between 1 and {limits.max_prompts} prompts")
        if len(prompts) * params.n > limits.max_rows:
            return _error(
                400,
                f"{len(prompts)} prompts x n={params.n} exceeds this server's limit of "
                f"{limits.max_rows} completions per request",
            )
        lengths = encode_all(prompts)
        if isinstance(lengths, JSONResponse):
            return lengths
        result = await asyncio.wrap_future(batcher.submit(prompts, params))
        flat = [c for choices in result for c in choices]
        ident, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if request.stream:
            chunks = [
                {
                    "id": ident,
                    "object": "text_completion",
                    "created": now,
                    "model": name,
                    "choices": [
                        {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
                    ],
                }
                for i, c in enumerate(flat)
            ]
            return sse(chunks)
        body = []
        for i, c in enumerate(flat):
            logprobs = None
            if params.logprobs and c.logprobs is not None and c.token_ids is not None:
                tokens = token_strings(c.token_ids)
                offsets, position = [], 0
                for t in tokens:
                    offsets.append(position)
                    position += len(t)
                logprobs = {
                    "tokens": tokens,
                    "token_logprobs": c.logprobs,
                    "top_logprobs": None,
                    "text_offset": offsets,
                }
            body.append({"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": logprobs})
        return {
            "id": ident,
            "object": "text_completion",
            "created": now,
            "model": name,
            "choices": body,
            "usage": usage(lengths, flat),
        }

    return app
