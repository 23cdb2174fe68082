"""CLI commands of the LLM layer: ``testtime serve`` and ``testtime llm generate``."""

from __future__ import annotations

import json
import os
import time

import typer

from testtime import cli_options
from testtime.errors import UserError

__all__ = ["register"]

_MODEL_HELP = "Model: 'smollm2' (embedded), a .gguf file, a local directory or a transformers hub id."


_DTYPE_HELP = (
    "Weights: fp32; bf16 (faster on CPUs with AVX-512 BF16 / AMX, and GPUs); int4 or int8 (bf16 model "
    "with weight-only int4 / int8 products for small batches, CPU only: int4 decodes one stream about "
    "1.8x faster than bf16; see docs/llm.md for the accuracy cost)."
)


def _dtype(name: str):
    """``--dtype`` as ``(torch dtype, quantize)``: fp32, bf16, int4, int8 (and long names); else a UserError."""
    import torch

    table = {
        "fp32": (torch.float32, None),
        "float32": (torch.float32, None),
        "bf16": (torch.bfloat16, None),
        "bfloat16": (torch.bfloat16, None),
        "int4": (torch.bfloat16, "int4"),
        "int8": (torch.bfloat16, "int8"),
    }
    if name.lower() not in table:
        raise UserError(f"--dtype must be fp32, bf16, int4 or int8, got {name!r}")
    return table[name.lower()]


def _load_llm(model: str, dtype: str, **kwargs):
    """``LocalLLM.from_name`` for ``--dtype``; a setting this model or machine cannot run is a UserError."""
    from testtime.llm.local import LocalLLM

    torch_dtype, quantize = _dtype(dtype)
    try:
        return LocalLLM.from_name(model, dtype=torch_dtype, quantize=quantize, **kwargs)
    except ValueError as exc:
        if quantize is None:
            raise
        raise UserError(f"--dtype {dtype}: {exc}") from exc


_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def register(app: typer.Typer) -> None:
    """Add ``testtime serve`` and the ``testtime llm`` group to the CLI."""

    @app.command("serve")
    def serve(
        model: str = typer.Option("smollm2", "--model", "-m", help=_MODEL_HELP),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 exposes it)."),
        port: int = typer.Option(8000, "--port", "-p", min=1, max=65535, help="TCP port to listen on."),
        api_key: str = typer.Option(
            None,
            "--api-key",
            envvar="TESTTIME_SERVE_API_KEY",
            help="Require 'Authorization: Bearer KEY' (also from $TESTTIME_SERVE_API_KEY; never printed).",
        ),
        served_name: str = typer.Option(
            None, "--served-model-name", help="The model id clients ask for (default: the --model value)."
        ),
        max_batch_size: int = typer.Option(
            32, "--max-batch-size", min=1, max=100_000, help="Most rows (prompts x n) per batch."
        ),
        max_tokens_limit: int = typer.Option(
            4096, "--max-tokens-limit", min=1, max=10_000_000, help="Largest max_tokens accepted."
        ),
        max_prompt_tokens: int = typer.Option(
            8192, "--max-prompt-tokens", min=1, max=10_000_000, help="Longest prompt accepted."
        ),
        max_wait_ms: float = typer.Option(
            10.0,
            "--max-wait-ms",
            min=0,
            max=60_000,
            callback=cli_options.finite,
            help="Static batching: how long a request waits for others to share its batch.",
        ),
        batching: str = typer.Option(
            "continuous",
            "--batching",
            help="'continuous' (requests join the running batch at the next step) or 'static' (the old batcher).",
        ),
        dtype: str = typer.Option("fp32", "--dtype", help=_DTYPE_HELP),
        max_kv_tokens: int = typer.Option(
            None,
            "--max-kv-tokens",
            min=1,
            max=1_000_000_000,
            help="Bound on the KV cache in tokens (rows x longest prompt+max_tokens).",
        ),
        prefill_chunk: int = typer.Option(
            None,
            "--prefill-chunk",
            min=0,
            max=1_000_000,
            help="Most prompt tokens prefilled per decoding step (chunked prefill: a long prompt joins over "
            "several steps while the others keep decoding); 0 prefills each prompt whole at once. "
            "Default: 256.",
        ),
        log_level: str = typer.Option("warning", "--log-level", help="uvicorn log level."),
        threads: int = cli_options.threads_option(
            help_text="torch threads while generating (1 is best on oversubscribed cores)."
        ),
    ) -> None:
        """Serve a local model over an OpenAI-compatible HTTP API (/v1/models, /v1/chat/completions,
        /v1/completions), batching concurrent requests into the engine."""
        try:
            import uvicorn

            from testtime.llm.engine import DEFAULT_PREFILL_CHUNK
            from testtime.llm.server import ServerLimits, create_app
        except ModuleNotFoundError as exc:
            raise UserError(f"`testtime serve` needs {exc.name}: pip install 'testtime[serve]'") from exc
        start = time.perf_counter()
        if log_level not in _LOG_LEVELS:
            raise UserError(f"--log-level must be one of {', '.join(_LOG_LEVELS)}, got {log_level!r}")
        if batching not in ("continuous", "static"):
            raise UserError(f"--batching must be continuous or static, got {batching!r}")
        _dtype(dtype)  # a bad value fails before the model loads
        llm = _load_llm(
            model,
            dtype,
            max_batch_size=max_batch_size,
            num_threads=threads,
            max_kv_tokens=max_kv_tokens,
            prefill_chunk=DEFAULT_PREFILL_CHUNK if prefill_chunk is None else (prefill_chunk or None),
        )
        name = served_name or model
        limits = ServerLimits(max_tokens_limit=max_tokens_limit, max_prompt_tokens=max_prompt_tokens)
        application = create_app(
            llm,
            model_name=name,
            api_key=api_key,
            limits=limits,
            batching=batching,  # type: ignore[arg-type]
            max_wait_s=max_wait_ms / 1000,
        )
        path = "lean Llama forward" if llm.engine.lean else f"model forward ({llm.engine.fallback_reason})"
        typer.echo(
            f"serving {name!r} ({path}, {dtype}, {batching} batching) on http://{host}:{port}/v1 "
            f"(loaded in {time.perf_counter() - start:.1f} s; key {'required' if api_key else 'not required'})",
        )
        uvicorn.run(application, host=host, port=port, log_level=log_level)

    llm_app = typer.Typer(help="Sample from a language model with the local engine.", no_args_is_help=True)

    @llm_app.command("generate")
    def generate(
        prompts: list[str] = typer.Argument(..., help="Prompts (each a user message unless --raw)."),
        model: str = typer.Option("smollm2", "--model", "-m", help=_MODEL_HELP),
        raw: bool = typer.Option(False, "--raw", help="Send prompts as raw text, without the chat template."),
        n: int = typer.Option(
            cli_options.NUM_SAMPLES,
            "--num-samples",
            "-n",
            "--n",
            min=1,
            max=10_000,
            help="Completions per prompt (--n: the older name).",
        ),
        temperature: float = cli_options.temperature_option(),
        top_p: float = cli_options.top_p_option(),
        max_tokens: int = typer.Option(
            cli_options.MAX_NEW_TOKENS,
            "--max-new-tokens",
            "--max-tokens",
            min=1,
            max=1_000_000,
            help="Tokens generated per completion at most (--max-tokens: the older name).",
        ),
        seed: int = cli_options.seed_option(None, "Seed of every random draw (default: unseeded)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object per completion."),
        threads: int = cli_options.threads_option(),
        dtype: str = typer.Option("fp32", "--dtype", help=_DTYPE_HELP),
        top_k: int = cli_options.top_k_option(),
    ) -> None:
        """Complete prompts with the local engine, batched, and print the answers with the throughput."""
        from testtime.llm.protocol import SamplingParams

        try:
            params = SamplingParams(
                n=n, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=seed
            )
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        _dtype(dtype)
        llm = _load_llm(model, dtype, num_threads=threads)
        batch = prompts if raw else [[{"role": "user", "content": p}] for p in prompts]
        out = llm.generate(batch, params)
        for prompt, choices in zip(prompts, out, strict=True):
            for index, choice in enumerate(choices):
                if as_json:
                    typer.echo(
                        json.dumps(
                            {
                                "prompt": prompt,
                                "index": index,
                                "text": choice.text,
                                "finish_reason": choice.finish_reason,
                                "completion_tokens": choice.completion_tokens,
                            }
                        )
                    )
                else:
                    typer.echo(f"> {prompt}" + (f" [{index}]" if n > 1 else "") + f"\n{choice.text}\n")
        usage = llm.usage
        typer.echo(
            f"{usage.completion_tokens} tokens in {usage.wall_seconds:.2f} s "
            f"({usage.completion_tokens / max(usage.wall_seconds, 1e-9):.1f} tok/s, {os.cpu_count()} CPUs)",
            err=True,
        )

    app.add_typer(llm_app, name="llm")
