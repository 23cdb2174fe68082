"""Mind Evolution against `testtime serve`'s app over real HTTP on loopback (a tiny random Llama)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("openai")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tiny_llama_dir):
    import torch
    import uvicorn

    from testtime.llm.loading import load_model
    from testtime.llm.local import LocalLLM
    from testtime.llm.server import create_app

    model, tokenizer = load_model(tiny_llama_dir, dtype=torch.float32)
    # RCC conversations outgrow the tiny model's 512 positions with its 300-token vocabulary; RoPE has no
    # learned positions, so a longer context is only a setting (an over-long prompt would be a failed
    # candidate, answered 400 by the server)
    model.config.max_position_embeddings = 4096
    app = create_app(LocalLLM(model, tokenizer, name="tiny"), model_name="tiny", max_wait_s=0.02)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=20)


def test_mind_evolution_over_http_end_to_end(server_url, tmp_path):
    from testtime.evolve import Budget, EvolveConfig, MindEvolution, read_log, task_evaluator
    from testtime.llm.openai_backend import OpenAILLM
    from testtime.llm.protocol import SamplingParams
    from testtime.tasks import get_task

    task = get_task("countdown")
    instance = task.instances(seed=0, n=1, num_numbers=3)[0]
    llm = OpenAILLM("tiny", base_url=server_url, api_key="unused", max_concurrency=4)
    log = tmp_path / "http.jsonl"
    result = MindEvolution(EvolveConfig.tiny(early_stop=False)).run(
        llm,
        task.prompt(instance),
        task_evaluator(task, instance),
        params=SamplingParams(temperature=1.0, max_tokens=6),
        budget=Budget(max_calls=10),
        log_path=str(log),
        seed=0,
    )
    assert result.cost.calls == 10 == llm.usage.calls
    records = read_log(log)[1:]
    assert len(records) == 10
    assert all(r["error"] is None and r["output_tokens"] > 0 for r in records)
    assert all(r["feedback"] for r in records if r["kind"] == "candidate")  # the verifier's words
    assert result.cost.input_tokens == llm.usage.prompt_tokens
