"""``testtime serve``: an OpenAI-compatible HTTP server (FastAPI) in front of a local backend.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /health``.

Every request goes through the backend's continuous-batching scheduler (:mod:`testtime.llm.scheduler`): it
joins the running batch at the next decoding step with its own sampling parameters and leaves when done.
``stream: true`` answers with server-sent events token by token (``stream_options.include_usage`` adds a
final usage chunk); a client that disconnects, streaming or not, has its rows cancelled, which frees their
slots at the next step. ``batching="static"`` keeps the earlier behaviour (requests with identical
parameters that arrive within ``max_wait_s`` run as one engine batch, one batch at a time) as a baseline
for ``benchmarks/serve_load.py``.

Bad input gets a 4xx in OpenAI's error format, never a 5xx: malformed JSON or fields, invalid Unicode
(lone surrogates), out-of-range seeds (400); a missing or wrong key when the server has one (401); an
unknown model (404); a body over ``max_body_bytes``, counted as it is received, chunked bodies included
(413); more than ``max_tokens_limit`` tokens, ``max_n`` choices, ``max_prompt_tokens`` prompt tokens, or a
prompt plus ``max_tokens`` beyond the model's context (400, with the numbers). Prompts are tokenized in a
worker thread, off the event loop. FastAPI and uvicorn are imported only when an app is built.

The pieces: :class:`ServerLimits`, :class:`Gate` (API key and body limit, ASGI middleware), :func:`request_models` (the
request schemas), :func:`sampling_params` (request -> SamplingParams), :func:`encode_prompts`,
:class:`TextStream` (incremental detokenization), :class:`Run` (one request in the scheduler, with
disconnect handling), the response builders, and :func:`create_app`, which wires them to routes.
"""

import asyncio
import concurrent.futures
import contextlib
import functools
import hmac
import json
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from testtime.llm.engine import Row
from testtime.llm.local import LocalLLM, _tops
from testtime.llm.protocol import Completion, SamplingParams

__all__ = [
    "ApiError",
    "Gate",
    "Run",
    "ServerLimits",
    "StaticBatcher",
    "TextStream",
    "create_app",
    "encode_prompts",
    "request_models",
    "sampling_params",
]

MAX_SEED = 2**63 - 1 - 1024  # seed + sample index must stay a valid torch seed


@dataclass(kw_only=True)
class ServerLimits:
    """What a request may ask for; more gets a 4xx.

    Attributes:
        max_tokens_limit: the largest ``max_tokens``.
        max_n: the largest ``n``.
        max_prompt_tokens: the longest prompt in tokens.
        max_prompts: the most prompts in one ``/v1/completions`` request.
        max_rows: the most completions (prompts times n) in one request.
        max_body_bytes: the largest request body (bytes received, with or without Content-Length).
        default_max_tokens: ``max_tokens`` when a request gives none.
        max_top_logprobs: the largest ``top_logprobs`` (chat) / ``logprobs`` (completions is capped at 5).
    """

    max_tokens_limit: int = 4096
    max_n: int = 64
    max_prompt_tokens: int = 8192
    max_prompts: int = 256
    max_rows: int = 512
    max_body_bytes: int = 4 * 1024 * 1024
    default_max_tokens: int = 256
    max_top_logprobs: int = 20


class ApiError(Exception):
    """A client error answered in OpenAI's error format."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.status}}


def _error_bytes(status: int, message: str, kind: str = "invalid_request_error") -> bytes:
    return json.dumps(ApiError(status, message, kind).body()).encode()


class Gate:
    """ASGI middleware in front of the app: the API key, then the body limit.

    Requests to ``/v1/`` need ``Authorization: Bearer <api_key>`` when a key is set (401). The whole request
    body is read before the app runs, counting bytes as they arrive: a body past ``max_bytes`` (declared by
    Content-Length or received, chunked or not) is answered 413 at once, without reading the rest; a
    smaller one is replayed to the app.
    """

    def __init__(self, app: Any, *, max_bytes: int, api_key: str | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.api_key = api_key

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None and scope.get("path", "").startswith("/v1/"):
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
                message = "missing or wrong API key (send 'Authorization: Bearer <key>')"
                await self._reject(send, 401, message, "auth_error")
                return
        if scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(
                send, 413, f"request body of {int(declared)} bytes exceeds the limit of {self.max_bytes}"
            )
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send, 413, f"request body exceeds the limit of {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    @staticmethod
    async def _reject(send: Callable, status: int, message: str, kind: str = "invalid_request_error") -> None:
        payload = _error_bytes(status, message, kind)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": payload})


@functools.cache
def request_models() -> tuple[type, type]:
    """The pydantic schemas ``(ChatRequest, CompletionRequest)`` (built on first use: pydantic is optional)."""
    from pydantic import BaseModel, ConfigDict, Field

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

    class StreamOptions(BaseModel):
        model_config = ConfigDict(extra="ignore")
        include_usage: bool = False

    class Common(BaseModel):
        model_config = ConfigDict(extra="ignore")
        model: str
        n: int = Field(1, ge=1)
        temperature: float = Field(1.0, ge=0.0, le=2.0)
        top_p: float = Field(1.0, gt=0.0, le=1.0)
        top_k: int = Field(0, ge=0)
        max_tokens: int | None = Field(None, ge=0)
        max_completion_tokens: int | None = Field(None, ge=0)
        stop: str | list[str] | None = None
        seed: int | None = Field(None, ge=0, le=MAX_SEED)
        stream: bool = False
        stream_options: StreamOptions | None = None

    class ChatRequest(Common):
        messages: list[ChatMessage] = Field(min_length=1)
        logprobs: bool = False
        top_logprobs: int | None = Field(None, ge=0, le=20)

    class CompletionRequest(Common):
        prompt: str | list[str]
        logprobs: int | None = Field(None, ge=0, le=5)
        echo: bool = False

    return ChatRequest, CompletionRequest


def _check_text(*texts: str) -> None:
    """Raise a 400 for text that is not valid Unicode (a lone surrogate from a ``\\ud800`` escape)."""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ApiError(400, f"invalid Unicode in the request text: {exc.reason} at {exc.start}") from None


def sampling_params(request: Any, limits: ServerLimits, *, chat: bool) -> SamplingParams:
    """The :class:`SamplingParams` of a validated request, or an :class:`ApiError` (400) for one out of limits."""
    max_tokens = (
        request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    )
    if max_tokens is None:
        max_tokens = min(limits.default_max_tokens, limits.max_tokens_limit)
    if max_tokens > limits.max_tokens_limit:
        raise ApiError(
            400, f"max_tokens={max_tokens} exceeds this server's limit of {limits.max_tokens_limit}"
        )
    if request.n > limits.max_n:
        raise ApiError(400, f"n={request.n} exceeds this server's limit of {limits.max_n}")
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    _check_text(*stop)
    if chat:
        logprobs = bool(request.logprobs)
        top = request.top_logprobs if logprobs else None
        if request.top_logprobs is not None and not logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true")
    else:  # legacy completions: logprobs = k returns the chosen tokens' and the k most likely (0: none)
        logprobs = request.logprobs is not None
        top = request.logprobs
    if top is not None and top > limits.max_top_logprobs:
        raise ApiError(400, f"top_logprobs={top} exceeds this server's limit of {limits.max_top_logprobs}")
    try:
        return SamplingParams(
            n=request.n,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            max_tokens=max_tokens,
            stop=tuple(s for s in stop if s),
            seed=request.seed,
            logprobs=logprobs,
            top_logprobs=top,
        )
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


async def encode_prompts(
    llm: LocalLLM, prompts: list[Any], params: SamplingParams, limits: ServerLimits
) -> list[list[int]]:
    """Tokenize prompts in a worker thread and check their lengths (400 with the numbers when too long)."""

    def encode_all() -> list[list[int]] | ApiError:
        out = []
        for prompt in prompts:
            try:
                out.append(llm.encode(prompt))
            except ValueError as exc:
                return ApiError(400, str(exc))
            except Exception as exc:  # a tokenizer refusing the text is the client's input, not a crash
                return ApiError(400, f"the prompt could not be tokenized: {exc}")
        return out

    result = await asyncio.to_thread(encode_all)
    if isinstance(result, ApiError):
        raise result
    context = llm.max_context
    for ids in result:
        if len(ids) > limits.max_prompt_tokens:
            raise ApiError(
                400, f"prompt of {len(ids)} tokens exceeds this server's limit of {limits.max_prompt_tokens}"
            )
        if context is not None and len(ids) + params.max_tokens > context:
            raise ApiError(
                400,
                f"prompt of {len(ids)} tokens plus max_tokens={params.max_tokens} is "
                f"{len(ids) + params.max_tokens} tokens, beyond the model's context of {context}",
            )
    return result


class TextStream:
    """Incremental text of one growing row: each :meth:`delta` is the text not yet sent.

    Text is held back while it ends in an incomplete UTF-8 character (decoded as U+FFFD) or could be the
    start of a stop string; :meth:`final` sends what remains of the final, stop-string-cut text.
    """

    def __init__(self, llm: LocalLLM, stop: tuple[str, ...]) -> None:
        self.llm = llm
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.sent = ""

    def delta(self, tokens: list[int]) -> str:
        text = self.llm._decode(tokens)
        if text.endswith("\ufffd"):
            return ""
        ready = text[: len(text) - self.hold] if self.hold else text
        if not ready.startswith(self.sent) or len(ready) <= len(self.sent):
            return ""
        piece, self.sent = ready[len(self.sent) :], ready
        return piece

    def final(self, text: str) -> str:
        piece = text[len(self.sent) :] if text.startswith(self.sent) else ""
        self.sent = text
        return piece


class Run:
    """One request in the scheduler: its rows, per-token events for streaming, cancellation.

    Args:
        llm: the backend.
        encoded: the prompts' token ids.
        params: sampling parameters.
        stream: deliver per-token events (:meth:`events`).
    """

    def __init__(
        self, llm: LocalLLM, encoded: list[list[int]], params: SamplingParams, *, stream: bool
    ) -> None:
        self.llm = llm
        self.params = params
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Row | None] = asyncio.Queue()
        on_token = self._on_token if stream else None
        self.handles = []
        try:
            for ids in encoded:
                self.handles.append(llm.submit(llm.rows(ids, params, on_token=on_token)))
        except ValueError as exc:
            self.cancel()
            raise ApiError(400, str(exc)) from None
        self.rows = [row for handle in self.handles for row in handle.rows]
        if stream:  # a failed step ends the stream (None wakes the consumer, which reads the futures)
            for handle in self.handles:
                handle.future.add_done_callback(
                    lambda _: self.loop.call_soon_threadsafe(self.queue.put_nowait, None)
                )

    def failure(self) -> BaseException | None:
        """The exception that broke one of this run's requests, if any."""
        for handle in self.handles:
            if handle.future.done() and handle.future.exception() is not None:
                return handle.future.exception()
        return None

    def _on_token(self, row: Row) -> None:  # the scheduler's thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, row)

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()

    async def result(self, request: Any) -> list[Completion]:
        """Wait for every row (cancelling them if the client disconnects first); completions in row order."""
        futures = [asyncio.wrap_future(handle.future) for handle in self.handles]
        gathered = asyncio.gather(*futures)
        try:
            while True:
                done, _ = await asyncio.wait({gathered}, timeout=0.25)
                if done:
                    break
                if await request.is_disconnected():
                    self.cancel()
                    raise ApiError(499, "client disconnected")
        except BaseException:
            self.cancel()
            raise
        return [self.llm.completion(row, self.params) for row in self.rows]


def _usage(prompt_lengths: list[int], choices: list[Completion]) -> dict[str, int]:
    prompt = sum(prompt_lengths)
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _token_text(llm: LocalLLM, token: int) -> str:
    return llm.tokenizer.decode([token])


def _chat_logprobs(llm: LocalLLM, ids: list[int], logprobs: list[float], tops: list[dict[int, float]] | None):
    def entry(token: int, logprob: float) -> dict[str, Any]:
        text = _token_text(llm, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8", "replace"))}

    content = []
    for j, (token, logprob) in enumerate(zip(ids, logprobs, strict=True)):
        item = entry(token, logprob)
        item["top_logprobs"] = [entry(t, lp) for t, lp in (tops[j].items() if tops else [])]
        content.append(item)
    return {"content": content}


def _completion_logprobs(
    llm: LocalLLM, ids: list[int], logprobs: list[float], tops: list[dict[int, float]] | None, offset: int = 0
):
    tokens = [_token_text(llm, t) for t in ids]
    offsets, position = [], offset
    for t in tokens:
        offsets.append(position)
        position += len(t)
    top = [{_token_text(llm, t): lp for t, lp in step.items()} for step in tops] if tops is not None else None
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top, "text_offset": offsets}


def chat_response(
    llm: LocalLLM, name: str, params: SamplingParams, lengths: list[int], choices: list[Completion]
):
    """The ``chat.completion`` body."""
    body = []
    for i, c in enumerate(choices):
        logprobs = None
        if params.logprobs and c.logprobs is not None and c.token_ids is not None:
            logprobs = _chat_logprobs(llm, c.token_ids, c.logprobs, c.top_logprobs)
        body.append(
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "finish_reason": c.finish_reason,
                "logprobs": logprobs,
            }
        )
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": body,
        "usage": _usage(lengths, choices),
    }


def completion_response(
    llm: LocalLLM, name: str, params: SamplingParams, lengths: list[int], choices: list[Completion]
):
    """The ``text_completion`` body."""
    body = []
    for i, c in enumerate(choices):
        logprobs = None
        if params.logprobs and c.logprobs is not None and c.token_ids is not None:
            logprobs = _completion_logprobs(llm, c.token_ids, c.logprobs, c.top_logprobs)
        body.append({"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": logprobs})
    per_prompt = [lengths[i // params.n] for i in range(len(choices))]
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": name,
        "choices": body,
        "usage": _usage(per_prompt, choices),
    }


async def stream_events(
    run: Run, *, chat: bool, name: str, lengths: list[int], include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events of a run: one chunk per new piece of text per choice, then finish, usage, [DONE].

    Cancelling the iterator (a disconnected client) cancels the run's rows.
    """
    llm, params = run.llm, run.params
    ident = f"chatcmpl-{uuid.uuid4().hex}" if chat else f"cmpl-{uuid.uuid4().hex}"
    kind = "chat.completion.chunk" if chat else "text_completion"
    created = int(time.time())
    index = {id(row): i for i, row in enumerate(run.rows)}
    streams = {i: TextStream(llm, params.stop) for i in range(len(run.rows))}
    sent_tokens = dict.fromkeys(range(len(run.rows)), 0)
    remaining = len(run.rows)

    def chunk(i: int, text: str | None, finish: str | None, first: bool = False, logprobs: Any = None) -> str:
        if chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {
                "index": i,
                "delta": delta,
                "finish_reason": finish,
                "logprobs": logprobs,
            }
        else:
            choice = {"index": i, "text": text or "", "finish_reason": finish, "logprobs": logprobs}
        payload = {"id": ident, "object": kind, "created": created, "model": name, "choices": [choice]}
        return f"data: {json.dumps(payload)}\n\n"

    try:
        if chat:
            for i in range(len(run.rows)):
                yield chunk(i, "", None, first=True)
        finished: set[int] = set()
        while remaining:
            row = await run.queue.get()
            if row is None:
                failure = run.failure()
                if failure is not None:
                    message = {"error": {"message": f"generation failed: {failure}", "type": "server_error"}}
                    yield f"data: {json.dumps(message)}\n\n"
                    return
                continue
            i = index[id(row)]
            if i in finished:
                continue
            upto = len(row.tokens)
            if upto <= sent_tokens[i] and row.finish_reason is None:
                continue
            new_ids = row.tokens[sent_tokens[i] : upto]
            logprobs = None
            if params.logprobs and new_ids:
                lps = row.token_logprobs[sent_tokens[i] : upto]
                tops = _tops(row, sent_tokens[i], upto) if params.top_logprobs is not None else None
                logprobs = (
                    _chat_logprobs(llm, new_ids, lps, tops)
                    if chat
                    else _completion_logprobs(llm, new_ids, lps, tops, offset=len(streams[i].sent))
                )
            sent_tokens[i] = upto
            if row.finish_reason is None:
                piece = streams[i].delta(row.tokens[:upto])
                if piece or logprobs:
                    yield chunk(i, piece, None, logprobs=logprobs)
                continue
            final = llm.completion(row, params)
            piece = streams[i].final(final.text)
            if piece or logprobs:
                yield chunk(i, piece, None, logprobs=logprobs)
            yield chunk(i, None if chat else "", final.finish_reason)
            finished.add(i)
            remaining -= 1
        if include_usage:
            choices = [llm.completion(row, params) for row in run.rows]
            per_prompt = [lengths[i // params.n] for i in range(len(choices))]
            payload = {
                "id": ident,
                "object": kind,
                "created": created,
                "model": name,
                "choices": [],
                "usage": _usage(per_prompt, choices),
            }
            yield f"data: {json.dumps(payload)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        run.cancel()  # no-op for finished rows; frees the slots of a disconnected client's rows


class StaticBatcher:
    """The static batching this server used before the scheduler (a baseline for benchmarks/serve_load.py).

    A worker thread takes every request that arrives within ``max_wait_s`` of the first, groups them by
    sampling parameters and runs each group as one engine batch (:meth:`LocalLLM.generate_static`), one
    group at a time.
    """

    def __init__(self, llm: LocalLLM, *, max_wait_s: float = 0.01) -> None:
        self.llm = llm
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="testtime-static-batcher", daemon=True)
        self.batches_run = 0
        self._thread.start()

    def submit(self, prompts: list[Any], params: SamplingParams) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((prompts, params, future))
        return future

    def close(self) -> None:
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
                    out = self.llm.generate_static(prompts, params)
                except Exception as exc:
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


def create_app(
    llm: LocalLLM,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
    batching: Literal["continuous", "static"] = "continuous",
    max_wait_s: float = 0.01,
) -> Any:
    """Build the FastAPI app serving ``llm``.

    Args:
        llm: the local backend.
        model_name: the model id clients must ask for (default ``llm.name``).
        api_key: when set, requests need ``Authorization: Bearer <api_key>``.
        limits: request limits.
        batching: ``"continuous"`` (the scheduler) or ``"static"`` (the earlier batcher, a baseline).
        max_wait_s: static batching only: how long a request waits for others to share its batch.

    Returns:
        The ``FastAPI`` application.
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if batching not in ("continuous", "static"):
        raise ValueError(f"batching must be 'continuous' or 'static', got {batching!r}")
    limits = limits or ServerLimits()
    name = model_name or llm.name
    created = int(time.time())
    chat_model, completion_model = request_models()
    static = StaticBatcher(llm, max_wait_s=max_wait_s) if batching == "static" else None
    counters = {"requests": 0}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        if static is not None:
            static.close()

    app = FastAPI(
        title="testtime", description="OpenAI-compatible server for a local testtime model", lifespan=lifespan
    )
    app.add_middleware(Gate, max_bytes=limits.max_body_bytes, api_key=api_key)

    def error(exc: ApiError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content=exc.body())

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return error(ApiError(400, f"invalid request: {problems}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(ApiError(exc.status_code, str(exc.detail)))

    @app.get("/health")
    def health() -> dict[str, Any]:
        scheduler = llm.scheduler
        return {
            "status": "ok",
            "batching": batching,
            "requests": counters["requests"],
            "steps": scheduler.steps,
            "running": scheduler.running,
            "waiting": scheduler.waiting,
            "max_running": scheduler.max_running,
            "batches": static.batches_run if static is not None else scheduler.prefills,
        }

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "testtime"}],
        }

    def check_model(request: Any) -> None:
        if request.model != name:
            raise ApiError(
                404, f"model {request.model!r} not found; this server serves {name!r}", "not_found_error"
            )

    async def answer(
        request: Request, prompts: list[Any], params: SamplingParams, body: Any, *, chat: bool
    ) -> Any:
        counters["requests"] += 1
        encoded = await encode_prompts(llm, prompts, params, limits)
        lengths = [len(ids) for ids in encoded]
        build = chat_response if chat else completion_response
        if static is not None:
            result = await asyncio.wrap_future(static.submit(prompts, params))
            choices = [c for per_prompt in result for c in per_prompt]
            if body.stream:
                return StreamingResponse(
                    _static_events(build(llm, name, params, lengths, choices), chat),
                    media_type="text/event-stream",
                )
            return build(llm, name, params, lengths, choices)
        run = Run(llm, encoded, params, stream=body.stream)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = stream_events(run, chat=chat, name=name, lengths=lengths, include_usage=include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        choices = await run.result(request)
        return build(llm, name, params, lengths, choices)

    @app.post("/v1/chat/completions")
    async def chat(request: Request, body: chat_model) -> Any:  # type: ignore[valid-type]
        check_model(body)
        params = sampling_params(body, limits, chat=True)
        conversation = [{"role": m.role, "content": m.text()} for m in body.messages]
        _check_text(*(m["content"] for m in conversation))
        return await answer(request, [conversation], params, body, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request, body: completion_model) -> Any:  # type: ignore[valid-type]
        check_model(body)
        params = sampling_params(body, limits, chat=False)
        if body.echo:
            raise ApiError(400, "echo is not supported")
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts or len(prompts) > limits.max_prompts:
            raise ApiError(400, f"give between 1 and {limits.max_prompts} prompts")
        if len(prompts) * params.n > limits.max_rows:
            raise ApiError(
                400,
                f"{len(prompts)} prompts x n={params.n} exceeds this server's limit of "
                f"{limits.max_rows} completions per request",
            )
        _check_text(*prompts)
        return await answer(request, prompts, params, body, chat=False)

    return app


async def _static_events(response: dict[str, Any], chat: bool) -> AsyncIterator[str]:
    """Static batching's stream: each choice's whole text as one chunk, then its finish chunk."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    for choice in response["choices"]:
        i = choice["index"]
        if chat:
            pieces = [
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": choice["message"]["content"]},
                    "finish_reason": None,
                }
            ]
            pieces.append({"index": i, "delta": {}, "finish_reason": choice["finish_reason"]})
        else:
            pieces = [
                {
                    "index": i,
                    "text": choice["text"],
                    "finish_reason": choice["finish_reason"],
                    "logprobs": None,
                }
            ]
        for piece in pieces:
            payload = {
                "id": response["id"],
                "object": kind,
                "created": response["created"],
                "model": response["model"],
                "choices": [piece],
            }
            yield f"data: {json.dumps(payload)}\n\n"
    yield "data: [DONE]\n\n"
