"""Load on ``testtime serve``: continuous batching against the static batcher (and llama.cpp), same run.

Eight client threads, each with its own official ``openai`` client, share a queue of 48 chat requests
(mixed prompt lengths, ``max_tokens`` 16 to 128, temperature 0.8, a distinct seed each) and send them
over HTTP on loopback to one server at a time:

- ``testtime serve --batching continuous`` (requests join the running batch at the next decoding step);
- ``testtime serve --batching static`` (the earlier batcher: one batch per group of requests with
  identical sampling parameters, which distinct seeds make groups of one);
- llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) on the same GGUF file,
  only when ``llama_cpp`` is importable.

Each server is started as a subprocess, warmed up with one short request, loaded with the same request
list, then stopped. With ``--rounds`` above 1 the servers run again in reversed order, alternating, so that
load from other processes hits them alike; the medians over rounds are reported. For each server: aggregate
completion tokens/s (all completion tokens over the wall time from the first request sent to the last
answer), and the p50/p95 latency of a request.

Usage::

    python benchmarks/serve_load.py [--requests 48] [--clients 8] [--threads 1] [--rounds 1]

The last line printed is one JSON object with ``ratio_vs_static`` (continuous / static tokens/s) and, when
llama.cpp was measured, ``ratio_vs_llamacpp`` (continuous / llama.cpp tokens/s).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass

TOPICS = [
    "gravity",
    "the water cycle",
    "prime numbers",
    "how a compiler works",
    "photosynthesis",
    "the seasons",
    "volcanoes",
    "the internet",
    "honey bees",
    "rainbows",
    "the moon's phases",
    "electric circuits",
]
CONTEXT = (
    "Here are some notes a student wrote while studying. They are long on purpose, so that the question "
    "arrives after a real amount of text that the model has to read before it can answer. "
)


@dataclass
class Request:
    """One chat request of the workload."""

    messages: list[dict[str, str]]
    max_tokens: int
    seed: int


def workload(count: int, seed: int) -> list[Request]:
    """``count`` requests: prompts of 1 to ~600 tokens, ``max_tokens`` 16..128, distinct seeds."""
    rng = random.Random(seed)
    requests = []
    for index in range(count):
        topic = TOPICS[index % len(TOPICS)]
        question = f"Explain {topic} in a few sentences."
        kind = rng.random()
        if kind < 0.5:  # short
            content = question
        elif kind < 0.8:  # medium: ~100-200 tokens of notes
            content = CONTEXT * rng.randint(3, 6) + question
        else:  # long: ~400-600 tokens
            content = CONTEXT * rng.randint(12, 18) + question
        requests.append(
            Request(
                messages=[{"role": "user", "content": content}],
                max_tokens=rng.randint(16, 128),
                seed=1000 + index,
            )
        )
    return requests


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server did not answer {url}/models within {timeout_s:.0f} s")


def _server_command(kind: str, port: int, args: argparse.Namespace, gguf: str) -> list[str]:
    if kind == "llamacpp":
        command = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--port", str(port)]
        command += ["--host", "127.0.0.1", "--n_ctx", "8192", "--model_alias", "bench"]
        # as many threads as ours (torch's default is every core; llama-cpp-python's server would take half
        # of them for decoding and every core for prompt processing)
        threads = str(args.threads or os.cpu_count() or 1)
        command += ["--n_threads", threads, "--n_threads_batch", threads]
        return command
    command = [sys.executable, "-m", "testtime", "serve", "--port", str(port), "--batching", kind]
    command += ["--served-model-name", "bench", "--max-batch-size", str(args.max_batch_size)]
    command += ["--dtype", args.dtype]
    if args.model:
        command += ["--model", args.model]
    if args.threads:
        command += ["--threads", str(args.threads)]
    return command


def _run_clients(url: str, requests: list[Request], clients: int, temperature: float) -> dict[str, float]:
    """Send every request through ``clients`` threads; aggregate tokens/s and latency percentiles."""
    import openai

    jobs: queue.Queue[Request] = queue.Queue()
    for request in requests:
        jobs.put(request)
    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        client = openai.OpenAI(base_url=url, api_key="none", timeout=3600, max_retries=0)
        while True:
            try:
                request = jobs.get_nowait()
            except queue.Empty:
                return
            start = time.perf_counter()
            try:
                reply = client.chat.completions.create(
                    model="bench",
                    messages=request.messages,  # type: ignore[arg-type]
                    max_tokens=request.max_tokens,
                    temperature=temperature,
                    seed=request.seed,
                )
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                tokens.append(reply.usage.completion_tokens if reply.usage else 0)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        print(f"  {len(errors)} failed requests, first: {errors[0]}", flush=True)
    ordered = sorted(latencies) or [float("nan")]
    return {
        "tok_s": sum(tokens) / wall,
        "completion_tokens": float(sum(tokens)),
        "wall_s": wall,
        "p50_s": statistics.median(ordered),
        "p95_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "failed": float(len(errors)),
    }


def measure(kind: str, args: argparse.Namespace, requests: list[Request], gguf: str) -> dict[str, float]:
    """Start one server, warm it up, run the workload against it, stop it."""
    import openai

    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    # The server's log goes to a file, not a pipe: llama.cpp logs a lot while loading, and an undrained
    # pipe fills up and blocks it before it ever listens.
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            _server_command(kind, port, args, gguf), stdout=subprocess.DEVNULL, stderr=log
        )
        try:
            try:
                _wait_ready(url, process, args.startup_timeout)
            except RuntimeError as exc:
                process.kill()
                process.wait()
                log.seek(0)
                raise RuntimeError(f"{kind}: {exc}\n{log.read()[-2000:]}") from exc
            warm = openai.OpenAI(base_url=url, api_key="none", timeout=600, max_retries=0)
            warm.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
            )
            return _run_clients(url, requests, args.clients, args.temperature)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=None, help="model for testtime serve (default: the embedded SmolLM2)"
    )
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--threads", type=int, default=None, help="server threads (default: the server's)")
    parser.add_argument("--dtype", default="fp32", help="testtime serve --dtype (fp32, bf16, int4 or int8)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="rounds over all servers, order alternating")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument("--no-llamacpp", action="store_true", help="skip llama.cpp even when importable")
    parser.add_argument(
        "--no-static",
        action="store_true",
        help="skip the static batcher (ratio_vs_static is then not reported)",
    )
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    args = parser.parse_args()
    for name in ("requests", "clients", "rounds", "max_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")

    try:
        import llama_cpp  # noqa: F401

        have_llamacpp = not args.no_llamacpp
        llamacpp_note = "measured" if have_llamacpp else "skipped (--no-llamacpp)"
    except ImportError:
        have_llamacpp = False
        llamacpp_note = "not importable: pip install 'llama-cpp-python[server]' to include it"
    gguf = ""
    if have_llamacpp:
        from testtime.llm.loading import resolve_model

        resolved = resolve_model(args.model)
        if resolved.gguf_file is None:
            have_llamacpp, llamacpp_note = False, "skipped: the model is not a GGUF file"
        else:
            gguf = os.path.join(resolved.path, resolved.gguf_file)

    requests = workload(args.requests, args.seed)
    kinds = ["continuous"] + ([] if args.no_static else ["static"]) + (["llamacpp"] if have_llamacpp else [])
    print(
        f"{len(requests)} requests ({sum(r.max_tokens for r in requests)} max_tokens in all), "
        f"{args.clients} clients, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; llama.cpp: {llamacpp_note}",
        flush=True,
    )
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    for round_index in range(args.rounds):
        for kind in kinds if round_index % 2 == 0 else kinds[::-1]:
            stats = measure(kind, args, requests, gguf)
            results[kind].append(stats)
            print(
                f"round {round_index + 1} {kind:>10}: {stats['tok_s']:6.1f} tok/s, "
                f"{int(stats['completion_tokens'])} tokens in {stats['wall_s']:.1f} s, "
                f"p50 {stats['p50_s']:.1f} s, p95 {stats['p95_s']:.1f} s, failed {int(stats['failed'])}",
                flush=True,
            )

    summary: dict[str, object] = {
        "requests": len(requests),
        "clients": args.clients,
        "rounds": args.rounds,
        "dtype": args.dtype,
        "threads": args.threads,
        "llamacpp": llamacpp_note,
    }
    for kind, runs in results.items():
        for key in ("tok_s", "p50_s", "p95_s"):
            summary[f"{kind}_{key}"] = round(statistics.median(run[key] for run in runs), 2)
        summary[f"{kind}_failed"] = int(sum(run["failed"] for run in runs))

    def ratio(other: str) -> float:
        pairs = zip(results["continuous"], results[other], strict=True)
        return round(statistics.median(a["tok_s"] / b["tok_s"] for a, b in pairs), 3)

    if not args.no_static:
        summary["ratio_vs_static"] = ratio("static")
    if have_llamacpp:
        summary["ratio_vs_llamacpp"] = ratio("llamacpp")
    summary["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
