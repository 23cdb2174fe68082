"""`testtime serve` started as a process on a free loopback port, spoken to with the official openai client."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

from testtime.llm import LocalLLM, OpenAILLM
from testtime.llm.loading import load_model

KEY = "test-key-789"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_llama_dir, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "TESTTIME_SERVE_API_KEY": KEY}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "testtime",
                "serve",
                "--model",
                str(tiny_llama_dir),
                "--port",
                str(port),
                "--served-model-name",
                "tiny",
                "--max-tokens-limit",
                "64",
                "--max-wait-ms",
                "50",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"testtime serve exited: {log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"testtime serve did not start: {log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    assert KEY not in log.read_text(), "the server must never print its API key"


@pytest.fixture(scope="module")
def local(tiny_llama_dir):
    model, tokenizer = load_model(tiny_llama_dir, dtype=torch.float32)
    return LocalLLM(model, tokenizer, name="tiny")


CHAT = [{"role": "user", "content": "what is the capital of france"}]


def test_models_endpoint(served):
    response = httpx.get(f"{served}/v1/models", headers={"authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == ["tiny"]


def test_openai_backend_over_http_equals_local(served, local):
    remote = OpenAILLM("tiny", base_url=f"{served}/v1", api_key=KEY)
    got = remote.generate([CHAT, "the quick brown"], temperature=0, max_tokens=12, logprobs=True)
    want = local.generate([CHAT, "the quick brown"], temperature=0, max_tokens=12, logprobs=True)
    for g, w in zip(got, want, strict=True):
        assert g[0].text == w[0].text
        assert g[0].finish_reason == w[0].finish_reason
        assert g[0].completion_tokens == w[0].completion_tokens
        assert g[0].prompt_tokens == w[0].prompt_tokens
        assert g[0].logprobs == pytest.approx(w[0].logprobs, abs=1e-4)
    assert remote.usage.completion_tokens == local.usage.completion_tokens


def test_n_and_seed_over_http(served):
    remote = OpenAILLM("tiny", base_url=f"{served}/v1", api_key=KEY)
    a = remote.generate([CHAT], n=3, temperature=1.0, max_tokens=8, seed=5)
    b = remote.generate([CHAT], n=3, temperature=1.0, max_tokens=8, seed=5)
    assert len(a[0]) == 3 and [c.text for c in a[0]] == [c.text for c in b[0]]
    assert remote._native_n is True


def test_concurrent_requests_share_batches(served, local):
    remote = OpenAILLM("tiny", base_url=f"{served}/v1", api_key=KEY, max_concurrency=8)
    before = httpx.get(f"{served}/health").json()

    async def burst():
        return await asyncio.gather(
            *(
                remote.agenerate([[{"role": "user", "content": f"one two {i}"}]], temperature=0, max_tokens=4)
                for i in range(8)
            )
        )

    results = asyncio.run(burst())
    # Each answer is what the same model gives that prompt on its own, in-process.
    for i, r in enumerate(results):
        alone = local.generate([[{"role": "user", "content": f"one two {i}"}]], temperature=0, max_tokens=4)
        assert r[0][0].text == alone[0][0].text
        assert r[0][0].completion_tokens == alone[0][0].completion_tokens > 0
    after = httpx.get(f"{served}/health").json()
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] < 8


def test_streaming(served):
    from openai import OpenAI

    client = OpenAI(base_url=f"{served}/v1", api_key=KEY)
    plain = client.chat.completions.create(model="tiny", messages=CHAT, temperature=0, max_tokens=8)
    stream = client.chat.completions.create(
        model="tiny", messages=CHAT, temperature=0, max_tokens=8, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == plain.choices[0].message.content


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ("{not json", 400, "invalid request"),
        (json.dumps({"model": "tiny"}), 400, "messages"),
        (json.dumps({"model": "tiny", "messages": []}), 400, "messages"),
        (json.dumps({"model": "tiny", "messages": [{"role": "user"}]}), 400, "content"),
        (json.dumps({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}), 400, "role"),
        (json.dumps({"model": "gpt-9", "messages": CHAT}), 404, "not found"),
        (json.dumps({"model": "tiny", "messages": CHAT, "max_tokens": 100000}), 400, "max_tokens"),
        (json.dumps({"model": "tiny", "messages": CHAT, "n": 1000}), 400, "n=1000"),
        (json.dumps({"model": "tiny", "messages": CHAT, "temperature": -1}), 400, "temperature"),
        (
            json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "a " * 20000}]}),
            400,
            "prompt of",
        ),
        (
            json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 5_000_000}]}),
            413,
            "exceeds",
        ),
    ],
)
def test_bad_requests_get_4xx(served, body, status, words):
    response = httpx.post(
        f"{served}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]


def test_bad_completions_and_auth(served):
    headers = {"authorization": f"Bearer {KEY}"}
    bad = httpx.post(f"{served}/v1/completions", json={"model": "tiny", "prompt": [1, 2, 3]}, headers=headers)
    assert bad.status_code == 400
    wrong_key = httpx.post(
        f"{served}/v1/completions",
        json={"model": "tiny", "prompt": "x"},
        headers={"authorization": "Bearer nope"},
    )
    assert wrong_key.status_code == 401
    no_key = httpx.get(f"{served}/v1/models")
    assert no_key.status_code == 401
    too_many = httpx.post(
        f"{served}/v1/completions", json={"model": "tiny", "prompt": ["a"] * 20, "n": 60}, headers=headers
    )
    assert too_many.status_code == 400 and "completions per request" in too_many.json()["error"]["message"]
    ok = httpx.post(
        f"{served}/v1/completions",
        json={"model": "tiny", "prompt": ["a b", "c"], "max_tokens": 3, "temperature": 0},
        headers=headers,
        timeout=60,
    )
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 2
