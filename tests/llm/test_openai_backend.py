"""The OpenAI backend over real loopback HTTP against a scripted stdlib server: concurrency, retries, cache, n."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from testtime.llm import OpenAILLM
from testtime.llm.openai_backend import InvalidResponseError, PartialGenerationError, RequestTimeoutError


class Scripted:
    """A minimal OpenAI-style server: echoes the last user message, records what it saw."""

    def __init__(
        self,
        *,
        delay: float = 0.0,
        fail_first: int = 0,
        fail_status: int = 429,
        native_n: bool = True,
        retry_after: str = "0.01",
        raw: bytes | None = None,
        trickle: float = 0.0,
        fail_prompt: str | None = None,
    ):
        self.retry_after = retry_after
        self.raw = raw  # answer 200 with exactly these bytes
        self.trickle = trickle  # seconds between the bytes of a reply
        self.fail_prompt = fail_prompt  # prompts containing this get a 400
        self.delay = delay
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.native_n = native_n
        self.hits = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []
        self.auth: list[str] = []
        self.lock = threading.Lock()

    def handle(self, handler: BaseHTTPRequestHandler) -> tuple[int, dict]:
        body = json.loads(handler.rfile.read(int(handler.headers["content-length"])))
        with self.lock:
            self.hits += 1
            hit = self.hits
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.bodies.append(body)
            self.auth.append(handler.headers.get("authorization", ""))
        try:
            time.sleep(self.delay)
            if hit <= self.fail_first:
                return self.fail_status, {"error": {"message": "busy", "type": "server_error"}}
            if self.fail_prompt is not None and self.fail_prompt in json.dumps(body):
                return 400, {"error": {"message": "bad prompt", "type": "invalid_request_error"}}
            n = body.get("n", 1) if self.native_n else 1
            if "messages" in body:
                text = body["messages"][-1]["content"]
                choices = [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": f"{text}#{i}#{body.get('seed')}"},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                    for i in range(n)
                ]
                kind = "chat.completion"
            else:
                choices = [
                    {"index": i, "text": f"{body['prompt']}!", "finish_reason": "length", "logprobs": None}
                    for i in range(n)
                ]
                kind = "text_completion"
            usage = {"prompt_tokens": 3, "completion_tokens": 2 * n, "total_tokens": 3 + 2 * n}
            return 200, {
                "id": f"x{hit}",
                "object": kind,
                "created": 0,
                "model": body["model"],
                "choices": choices,
                "usage": usage,
            }
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def server():
    scripts: list[Scripted] = []

    def start(**kwargs):
        script = Scripted(**kwargs)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                status, payload = script.handle(self)
                data = json.dumps(payload).encode() if script.raw is None else script.raw
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if status == 429:
                    self.send_header("retry-after", script.retry_after)
                self.end_headers()
                if script.trickle:
                    for byte in data:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(script.trickle)
                else:
                    self.wfile.write(data)

            def log_message(self, *args):
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        script.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        script.httpd = httpd
        scripts.append(script)
        return script

    yield start
    for script in scripts:
        script.httpd.shutdown()
        script.httpd.server_close()


def test_chat_and_completions_and_usage(server):
    s = server()
    llm = OpenAILLM("m", base_url=s.url, api_key="sk-secret-123")
    out = llm.generate([[{"role": "user", "content": "hi"}], "raw"], temperature=0, max_tokens=5, seed=4)
    assert out[0][0].text == "hi#0#4" and out[0][0].finish_reason == "stop"
    assert out[1][0].text == "raw!" and out[1][0].finish_reason == "length"
    assert s.bodies[0]["max_tokens"] == 5 and s.bodies[0]["temperature"] == 0
    assert s.auth == ["Bearer sk-secret-123"] * 2
    assert llm.usage.calls == 2 and llm.usage.prompt_tokens == 6 and llm.usage.completion_tokens == 4
    assert "sk-secret" not in repr(llm) and "sk-secret" not in str(vars(llm).get("name"))


def test_concurrency_is_bounded(server):
    s = server(delay=0.15)
    llm = OpenAILLM("m", base_url=s.url, max_concurrency=3)
    out = llm.generate([f"p{i}" for i in range(10)])
    assert [c[0].text for c in out] == [f"p{i}!" for i in range(10)]
    assert s.max_in_flight == 3
    unbounded = server(delay=0.15)
    OpenAILLM("m", base_url=unbounded.url, max_concurrency=10).generate([f"p{i}" for i in range(10)])
    assert unbounded.max_in_flight > 3  # the bound, not the server, limited the first run


@pytest.mark.parametrize("status", [429, 500, 503])
def test_retries_with_backoff(server, status):
    s = server(fail_first=2, fail_status=status)
    llm = OpenAILLM("m", base_url=s.url, max_retries=3, backoff=0.01)
    assert llm.complete("x") == "x!"
    assert s.hits == 3 and llm.requests_sent == 3


def test_gives_up_after_max_retries_and_does_not_retry_4xx(server):
    import openai

    s = server(fail_first=10, fail_status=503)
    with pytest.raises(openai.InternalServerError):
        OpenAILLM("m", base_url=s.url, max_retries=2, backoff=0.01).complete("x")
    assert s.hits == 3
    bad = server(fail_first=10, fail_status=400)
    with pytest.raises(openai.BadRequestError):
        OpenAILLM("m", base_url=bad.url, max_retries=5, backoff=0.01).complete("x")
    assert bad.hits == 1


def test_timeouts_are_retried_then_raised(server):
    s = server(delay=1.0)
    llm = OpenAILLM("m", base_url=s.url, timeout=0.2, max_retries=1, backoff=0.01)
    with pytest.raises(RequestTimeoutError):
        llm.complete("x")
    assert llm.requests_sent == 2


def test_cache_answers_repeats_without_the_server(server, tmp_path):
    s = server()
    llm = OpenAILLM("m", base_url=s.url, cache_dir=tmp_path / "cache")
    first = llm.generate([[{"role": "user", "content": "hi"}]], temperature=0.5, seed=1)
    assert s.hits == 1
    again = OpenAILLM("m", base_url=s.url, cache_dir=tmp_path / "cache")  # a new process would see the same
    second = again.generate([[{"role": "user", "content": "hi"}]], temperature=0.5, seed=1)
    assert s.hits == 1 and second[0][0].text == first[0][0].text
    assert again.usage.cache_hits == 1
    # Any change of the request is a different key.
    again.generate([[{"role": "user", "content": "hi"}]], temperature=0.5, seed=2)
    again.generate([[{"role": "user", "content": "hi"}]], temperature=0.6, seed=1)
    assert s.hits == 3
    for path in (tmp_path / "cache").rglob("*.json"):
        assert "Bearer" not in path.read_text()


def test_n_is_emulated_when_the_server_ignores_it(server):
    s = server(native_n=False)
    llm = OpenAILLM("m", base_url=s.url)
    out = llm.generate([[{"role": "user", "content": "q"}]], n=3, seed=10)
    assert [c.text for c in out[0]] == ["q#0#10", "q#0#11", "q#0#12"]
    assert s.hits == 3 and llm._native_n is False
    llm.generate([[{"role": "user", "content": "q"}]], n=2, seed=0)
    assert s.hits == 5 and all("n" not in b for b in s.bodies[3:])  # later calls emulate directly
    native = server(native_n=True)
    out = OpenAILLM("m", base_url=native.url).generate(["p"], n=4)
    assert len(out[0]) == 4 and native.hits == 1


def test_key_from_environment_is_not_printed(server, monkeypatch, capsys):
    s = server()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-456")
    monkeypatch.setenv("OPENAI_BASE_URL", s.url)
    llm = OpenAILLM("m")
    print(llm)
    assert llm.complete("a") == "a!"
    assert s.auth == ["Bearer sk-env-456"]
    assert "sk-env-456" not in capsys.readouterr().out


@pytest.mark.parametrize("retry_after", ["3600", "inf", "-5", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_retry_after_is_capped_by_max_backoff(server, retry_after):
    s = server(fail_first=1, fail_status=429, retry_after=retry_after)
    llm = OpenAILLM("m", base_url=s.url, max_retries=2, backoff=0.01, max_backoff=0.2)
    start = time.perf_counter()
    assert llm.complete("x") == "x!"
    assert time.perf_counter() - start < 3.0
    assert s.hits == 2


def test_timeout_bounds_a_trickling_reply_and_deadline_bounds_retries(server):
    s = server(trickle=0.02)  # a ~150-byte reply at 50 bytes/s: every read is quick, the whole is not
    llm = OpenAILLM("m", base_url=s.url, timeout=0.5, max_retries=0)
    start = time.perf_counter()
    with pytest.raises(RequestTimeoutError):
        llm.complete("x")
    assert time.perf_counter() - start < 2.0
    busy = server(fail_first=100, fail_status=503)
    llm = OpenAILLM("m", base_url=busy.url, max_retries=100, backoff=0.2, max_backoff=0.2, deadline=0.7)
    start = time.perf_counter()
    with pytest.raises(RequestTimeoutError, match="deadline"):
        llm.complete("x")
    assert time.perf_counter() - start < 2.0 and busy.hits < 10


def test_one_failed_prompt_keeps_the_others(server):
    s = server(fail_prompt="poison")
    llm = OpenAILLM("m", base_url=s.url, max_retries=0)
    with pytest.raises(PartialGenerationError) as info:
        llm.generate(["a", "poison", "b"])
    assert [c and c[0].text for c in info.value.completions] == ["a!", None, "b!"]
    assert list(info.value.errors) == [1]


@pytest.mark.parametrize(
    ("raw", "words"),
    [(b"", "not valid JSON"), (b"hello", "not valid JSON"), (b"[1]", "not an object"), (b"{}", "choices")],
)
def test_empty_or_non_json_responses_are_clear_errors(server, raw, words):
    s = server(raw=raw)
    with pytest.raises(InvalidResponseError, match=words):
        OpenAILLM("m", base_url=s.url, max_retries=0).complete("x")
