"""Mind Evolution candidates per minute: concurrent conversations against sequential ones, on the local
engine and through `testtime serve` (in-process uvicorn on loopback), in the same run.

Each measurement runs the same search (Table 1's N_convs = 5 conversations per island, N_seq turns, no early
stop) once with each turn's calls issued concurrently (``asyncio.gather``) and once one after another
(``concurrent=False``, the peer). Candidates per minute = candidates / wall seconds. The last line is one
JSON object; ``speed_ratio`` is concurrent / sequential on the local engine (goal >= 2), ``serve_speed_ratio``
the same through the server.

    python benchmarks/evolve_concurrency.py                 # embedded SmolLM2, 1 thread
    python benchmarks/evolve_concurrency.py --tiny          # a tiny random Llama (seconds; a smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(llm, config, *, concurrent: bool, max_tokens: int, seed: int) -> dict:
    from testtime.evolve import MindEvolution, task_evaluator
    from testtime.llm.protocol import SamplingParams
    from testtime.tasks import get_task

    task = get_task("countdown")
    instance = task.instances(seed=seed, n=1, num_numbers=3, max_number=20)[0]
    start = time.perf_counter()
    result = MindEvolution(config).run(
        llm,
        task.prompt(instance),
        task_evaluator(task, instance),
        seed=seed,
        params=SamplingParams(temperature=0.8, max_tokens=max_tokens),
        concurrent=concurrent,
    )
    seconds = time.perf_counter() - start
    return {
        "candidates": len(result.candidates),
        "seconds": round(seconds, 2),
        "per_minute": round(60 * len(result.candidates) / seconds, 1),
        "output_tokens": result.cost.output_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="local model (default: the embedded SmolLM2)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead (smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--turns", type=int, default=2, help="N_seq turns per conversation")
    parser.add_argument("--repeats", type=int, default=1, help="repeat each measurement, report the median")
    parser.add_argument("--skip-serve", action="store_true")
    args = parser.parse_args()

    import statistics

    import torch

    torch.set_num_threads(args.threads)
    from testtime.evolve import EvolveConfig
    from testtime.llm.loading import load_model
    from testtime.llm.local import LocalLLM

    if args.tiny:
        import tempfile

        from testtime.testing import save_tiny_llama

        path = save_tiny_llama(tempfile.mkdtemp())
        model, tokenizer = load_model(path, dtype=torch.float32)
    else:
        model, tokenizer = load_model(args.model)
    config = EvolveConfig.paper(
        num_generations=1, num_islands=1, num_turns=args.turns, early_stop=False, num_reset=0
    )
    local = LocalLLM(model, tokenizer, name="local", num_threads=args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"load average at start: {load}; {config.num_conversations} conversations x {args.turns} turns")
    measure(local, config, concurrent=True, max_tokens=8, seed=99)  # warm-up
    out: dict = {"load_average_start": load, "conversations": config.num_conversations, "turns": args.turns}

    def pair(llm, label: str) -> float:
        ratios, rows = [], []
        for repeat in range(args.repeats):
            seq = measure(llm, config, concurrent=False, max_tokens=args.max_new_tokens, seed=repeat)
            con = measure(llm, config, concurrent=True, max_tokens=args.max_new_tokens, seed=repeat)
            ratios.append(con["per_minute"] / seq["per_minute"])
            rows.append((seq, con))
            print(f"{label} sequential: {seq}")
            print(f"{label} concurrent: {con}")
        out[f"{label}_sequential_per_minute"] = statistics.median(r[0]["per_minute"] for r in rows)
        out[f"{label}_concurrent_per_minute"] = statistics.median(r[1]["per_minute"] for r in rows)
        return round(statistics.median(ratios), 2)

    out["speed_ratio"] = pair(local, "local")
    if not args.skip_serve:
        import uvicorn

        from testtime.llm.openai_backend import OpenAILLM
        from testtime.llm.server import create_app

        served = LocalLLM(model, tokenizer, name="served", num_threads=args.threads)
        app = create_app(served, model_name="served", max_wait_s=0.02)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        remote = OpenAILLM(
            "served", base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_concurrency=8
        )
        try:
            out["serve_speed_ratio"] = pair(remote, "serve")
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    out["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps(out))


if __name__ == "__main__":
    main()
