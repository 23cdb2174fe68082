"""The server over real HTTP (uvicorn in a thread on a free loopback port) and in-process: continuous batching,
per-request determinism, streaming, cancellation on disconnect, and a 4xx for every bad input."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest
import torch

from testtime.llm import LocalLLM
from testtime.llm.loading import load_model
from testtime.llm.server import ServerLimits, create_app

CHAT = [{"role": "user", "content": "what is the capital of france"}]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server:
    """uvicorn serving an app in a thread of this process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def llm64(tiny_llama_dir):
    model, tokenizer = load_model(tiny_llama_dir, dtype=torch.float64)
    llm = LocalLLM(model, tokenizer, name="tiny", max_batch_size=16)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def server(llm64):
    app = create_app(llm64, limits=ServerLimits(max_body_bytes=100_000, max_tokens_limit=400))
    with _Server(app) as running:
        yield running.url


def _chat(url: str, timeout: float = 60, **fields) -> dict:
    body = {"model": "tiny", "messages": CHAT, **fields}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=timeout)
    assert response.status_code == 200, response.text
    return response.json()


def _answers(body: dict) -> list[tuple[str, list[float] | None]]:
    out = []
    for choice in body["choices"]:
        logprobs = choice["logprobs"]
        values = [t["logprob"] for t in logprobs["content"]] if logprobs else None
        out.append((choice["message"]["content"], values))
    return out


REQUESTS = [
    {"temperature": 0, "max_tokens": 12},
    {"temperature": 1, "seed": 42, "max_tokens": 20, "logprobs": True},
    {"temperature": 1, "seed": 42, "max_tokens": 20, "logprobs": True},
    {"temperature": 0.8, "top_p": 0.9, "seed": 7, "max_tokens": 16, "n": 2},
    {"temperature": 1.3, "seed": 3, "max_tokens": 9, "stop": ["e"]},
]


def test_concurrent_http_clients_get_what_each_gets_alone(server):
    alone = [_answers(_chat(server, **fields)) for fields in REQUESTS]
    results: dict[int, list] = {}

    def call(i: int) -> None:
        results[i] = _answers(_chat(server, **REQUESTS[i % len(REQUESTS)]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2 * len(REQUESTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i in range(2 * len(REQUESTS)):
        want = alone[i % len(REQUESTS)]
        got = results[i]
        assert [text for text, _ in got] == [text for text, _ in want], f"request {i}"
        for (_, lp), (_, want_lp) in zip(got, want, strict=True):
            assert lp == want_lp or lp == pytest.approx(want_lp, abs=1e-9)
    assert alone[1] == alone[2], "identical seeded requests agree"
    assert httpx.get(f"{server}/health").json()["max_running"] > 1


def test_streamed_chunks_arrive_before_generation_ends(server):
    fields = {"temperature": 0, "max_tokens": 300}
    plain = _chat(server, **fields)
    text_parts: list[str] = []
    running_at_first_chunk = None
    usage = None
    body = {
        "model": "tiny",
        "messages": CHAT,
        "stream": True,
        "stream_options": {"include_usage": True},
        **fields,
    }
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
                assert chunk["choices"] == []
                continue
            content = chunk["choices"][0]["delta"].get("content")
            if content and running_at_first_chunk is None:
                running_at_first_chunk = httpx.get(f"{server}/health").json()["running"]
            text_parts.append(content or "")
    assert "".join(text_parts) == plain["choices"][0]["message"]["content"]
    assert len([p for p in text_parts if p]) > 3, "the text comes in many pieces"
    assert running_at_first_chunk and running_at_first_chunk >= 1, "the first piece came while generating"
    assert usage == plain["usage"]


def test_openai_client_streams_completions_with_logprobs(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key="x")
    plain = client.completions.create(
        model="tiny", prompt="the quick brown", max_tokens=10, temperature=0, logprobs=2
    )
    stream = client.completions.create(
        model="tiny", prompt="the quick brown", max_tokens=10, temperature=0, logprobs=2, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    streamed = [lp for c in chunks if c.choices[0].logprobs for lp in c.choices[0].logprobs.token_logprobs]
    assert streamed == pytest.approx(plain.choices[0].logprobs.token_logprobs, abs=1e-9)
    # logprobs = 0: the chosen tokens' log-probs, no alternatives.
    zero = client.completions.create(
        model="tiny", prompt="the quick brown", max_tokens=4, temperature=0, logprobs=0
    )
    assert len(zero.choices[0].logprobs.token_logprobs) == 4
    assert all(top == {} for top in zero.choices[0].logprobs.top_logprobs)
    assert all(len(top) == 2 for top in plain.choices[0].logprobs.top_logprobs)


def test_chat_top_logprobs_are_the_models(server, llm64):
    body = _chat(server, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3)
    content = body["choices"][0]["logprobs"]["content"]
    ids = llm64.encode(CHAT)
    local = llm64.generate([CHAT], temperature=0, max_tokens=5, logprobs=True, top_logprobs=3)[0][0]
    assert [t["logprob"] for t in content] == pytest.approx(local.logprobs, abs=1e-9)
    for item, top in zip(content, local.top_logprobs, strict=True):
        assert [t["logprob"] for t in item["top_logprobs"]] == pytest.approx(list(top.values()), abs=1e-9)
        assert item["top_logprobs"][0]["logprob"] >= item["logprob"] - 1e-12
    assert body["usage"]["prompt_tokens"] == len(ids)


def test_disconnected_clients_free_their_slots(tiny_llama_dir):
    model, tokenizer = load_model(tiny_llama_dir, dtype=torch.float32)
    llm = LocalLLM(model, tokenizer, name="tiny", max_batch_size=1)  # one slot
    # The tiny model decodes 480 tokens in well under the client's 0.3 s on a fast idle CPU; 5 ms per
    # step makes the long request outlast the client whatever the machine.
    batch = llm.scheduler.batch
    step = batch.step

    def slow_step():
        time.sleep(0.005)
        return step()

    batch.step = slow_step
    try:
        with _Server(create_app(llm)) as running:
            url = running.url
            long = {"model": "tiny", "messages": CHAT, "temperature": 1, "seed": 1, "max_tokens": 480}
            # A non-streaming client that gives up.
            with pytest.raises(httpx.TimeoutException):
                httpx.post(f"{url}/v1/chat/completions", json=long, timeout=0.3)
            start = time.perf_counter()
            short = _chat(url, temperature=0, max_tokens=3)
            assert short["usage"]["completion_tokens"] <= 3
            # A streaming client that leaves after its first chunk.
            with httpx.stream(
                "POST", f"{url}/v1/chat/completions", json={**long, "stream": True}, timeout=30
            ) as r:
                next(r.iter_lines())
            _chat(url, temperature=0, max_tokens=3)
            elapsed = time.perf_counter() - start
            health = httpx.get(f"{url}/health").json()
            # Both long rows left early: far fewer than 2 x 480 steps ran.
            assert health["steps"] < 480, (health, elapsed)
            assert health["running"] == 0
    finally:
        llm.close()


def _post_raw(url: str, content, headers=None) -> httpx.Response:
    headers = {"content-type": "application/json", **(headers or {})}
    return httpx.post(f"{url}/v1/chat/completions", content=content, headers=headers, timeout=60)


def test_bad_inputs_get_4xx_over_http(server, llm64):
    long_prompt = "one two three " * 200
    assert len(llm64.encode([{"role": "user", "content": long_prompt}])) + 300 > 512
    cases = [
        (
            json.dumps(
                {"model": "tiny", "messages": [{"role": "user", "content": long_prompt}], "max_tokens": 300}
            ),
            400,
            "context of 512",
        ),
        (json.dumps({"model": "tiny", "messages": CHAT, "seed": 18446744073709551616}), 400, "seed"),
        (json.dumps({"model": "tiny", "messages": CHAT, "seed": -1}), 400, "seed"),
        ('{"model": "tiny", "messages": [{"role": "user", "content": "a \\ud800 b"}]}', 400, "Unicode"),
        (json.dumps({"model": "tiny", "messages": CHAT, "top_logprobs": 3}), 400, "logprobs"),
        (
            json.dumps({"model": "tiny", "messages": CHAT, "top_logprobs": 50, "logprobs": True}),
            400,
            "top_logprobs",
        ),
        (
            json.dumps({"model": "tiny", "messages": CHAT, "stop": ["\ud800"]}, ensure_ascii=True),
            400,
            "Unicode",
        ),
        ("[1, 2]", 400, "invalid request"),
    ]
    for body, status, words in cases:
        response = _post_raw(server, body)
        assert response.status_code == status, (body[:80], response.text)
        assert words in response.json()["error"]["message"], response.text

    def chunked():
        piece = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"x" * 10_000
        yield piece
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}]}'

    response = _post_raw(server, chunked())
    assert response.status_code == 413 and "limit" in response.json()["error"]["message"]
    prompt = {"model": "tiny", "prompt": "a \ud800"}
    response = httpx.post(
        f"{server}/v1/completions",
        content=json.dumps(prompt, ensure_ascii=True),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    # The server still answers afterwards.
    assert _chat(server, temperature=0, max_tokens=2)["usage"]["completion_tokens"] <= 2


def test_in_process_app_and_static_baseline(llm64):
    """The same app in-process (ASGI transport), in both batching modes."""
    continuous = create_app(llm64)
    static = create_app(llm64, batching="static")

    async def run():
        results = {}
        for label, app in (("continuous", continuous), ("static", static)):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                ok = await client.post(
                    "/v1/chat/completions",
                    json={"model": "tiny", "messages": CHAT, "temperature": 0, "max_tokens": 6},
                )
                bad = await client.post(
                    "/v1/chat/completions", json={"model": "tiny", "messages": CHAT, "n": 0}
                )
                results[label] = (
                    ok.status_code,
                    ok.json()["choices"][0]["message"]["content"],
                    bad.status_code,
                )
        return results

    results = asyncio.run(run())
    assert results["continuous"] == results["static"]
    assert results["continuous"][0] == 200 and results["continuous"][2] == 400
    with pytest.raises(ValueError, match="batching"):
        create_app(llm64, batching="dynamic")  # type: ignore[arg-type]
