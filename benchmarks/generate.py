"""Tokens/s of the testtime engine against ``transformers.generate`` on the embedded model, same run.

Both decode greedily the same chat prompts (left-padded batches for ``generate``), stopping each row at
its end-of-sequence token; a run's tokens are the tokens generated up to and including it. The two are
measured interleaved (generate, engine, generate, engine, ...) so that load from other processes hits
both alike, and the medians and their ratio are reported. Greedy outputs are compared token by token.

The engine also runs on a bfloat16 copy of the model in the same interleaved rounds (``--no-bf16`` skips
it): its tokens/s, its ratio to the float32 engine, and the share of rows whose greedy tokens equal the
float32 engine's (bfloat16 rounding changes some argmaxes; the test suite checks that the bfloat16 engine
equals ``generate`` in bfloat16). Whether bfloat16 is faster depends on the CPU: with AVX-512 BF16 or AMX,
oneDNN runs the products natively; without them (AVX2 only) torch converts to float32 and it is slower.
The engine with weight-only int4 products (``Engine(model16, quantize="int4")``: the layers in int4,
groups of 32 as in the GGUF file's Q4_1, the LM head in int8; ``--quantized int8`` adds int8 everywhere,
``--quantized`` alone none) runs on the bfloat16 model in the same rounds: at batch 1 decoding reads every
weight once per token, so fewer bytes per weight is what moves the rate there. When ``llama_cpp``
(llama-cpp-python) is importable, llama.cpp decodes the batch-1 prompt greedily from the same GGUF file in
the same rounds.

Usage::

    python benchmarks/generate.py [--batch-sizes 1 8 32] [--max-new-tokens 64] [--repeats 3] [--no-bf16]
                                  [--quantized int4 int8]

The last line printed is one JSON object with ``ratio_batch8`` (engine / generate aggregate tokens/s at
batch 8), ``bf16_vs_fp32_batch*``, ``int4_tok_s_batch*``, ``llamacpp_tok_s_batch1`` with
``bf16_vs_llamacpp_batch1`` and ``int4_vs_llamacpp_batch1`` when measured, and the other measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from testtime.llm.reference import hf_generate_greedy

QUESTIONS = [  # batch b takes the first b; the first has a long answer so that batch 1 measures decoding
    "Explain gravity to a child in two sentences.",
    "Give one reason the sky looks blue.",
    "Write a haiku about test-time compute.",
    "What is 12 + 30?",
    "Name three fruits that are red.",
    "What is the capital of France?",
    "What is a prime number?",
    "Tell me a short joke about computers.",
    "How many legs does a spider have?",
    "Why do leaves change colour in autumn?",
    "What does a compiler do?",
    "Describe the water cycle briefly.",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "Suggest a name for a pet turtle.",
    "What is the difference between weather and climate?",
    "List two uses of a paperclip.",
    "What is photosynthesis?",
    "Translate 'good morning' into Spanish.",
    "What is the largest planet in the solar system?",
    "Give me a tip for learning to code.",
    "What is 7 times 8?",
    "Why is exercise healthy?",
    "What is an atom made of?",
    "Write one sentence about the ocean.",
    "What do bees make?",
    "How does a rainbow form?",
    "Name a famous painting.",
    "What is the square root of 81?",
    "What is the main ingredient of bread?",
    "Why do we have seasons?",
    "What language is spoken in Brazil?",
]


def _prompts(tokenizer, batch: int) -> list[list[int]]:
    chats = [[{"role": "user", "content": q}] for q in (QUESTIONS * 4)[:batch]]
    return [
        list(tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False))
        for c in chats
    ]


PAUSE_S = 0.3  # before each timed run: the previous contender's spinning OpenMP threads go to sleep


def _products_ceiling(engine, repeats: int = 7) -> float:
    """Tokens/s if a batch-1 decoding step cost only its weight products (every layer's and the LM head's).

    Runs the engine's own prepared products (packed, fused) on one row, nothing else: the bound that
    memory bandwidth and the product kernels set, whatever the rest of the step costs.
    """
    engine._sync_weights()
    products = [p for layer in engine._layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    products.append(engine._head[1])
    config = engine.model.config
    inputs = {}
    for layer in engine.model.model.layers[:1]:
        for module in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj):
            inputs[module.in_features] = torch.randn(1, module.in_features, dtype=engine.dtype)
    widths = [config.hidden_size, layer.self_attn.o_proj.in_features, config.hidden_size]
    widths += [layer.mlp.down_proj.in_features]
    order = widths * len(engine._layers) + [config.hidden_size]
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            for product, width in zip(products, order, strict=True):
                product(inputs[width])
            times.append(time.perf_counter() - start)
    return 1 / statistics.median(times[2:])


def _run_generate(model, prompts: list[list[int]], max_new_tokens: int, eos: list[int], pad: int):
    time.sleep(PAUSE_S)
    return hf_generate_greedy(
        model, prompts, max_new_tokens=max_new_tokens, eos_token_ids=eos, pad_token_id=pad
    )


def _run_engine(engine, prompts: list[list[int]], max_new_tokens: int, eos: list[int]):
    time.sleep(PAUSE_S)
    start = time.perf_counter()
    result = engine.generate(prompts, max_new_tokens=max_new_tokens, stop_token_ids=eos)
    return result.tokens, time.perf_counter() - start


def _cpu_flags() -> str:
    """The CPU's bfloat16-relevant flags (``avx512_bf16``, ``amx_bf16``, ``avx512f``, ``avx2``) from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    return ",".join(f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f in flags) or "none"


def _llamacpp(gguf: str | None, threads: int):
    """A llama.cpp model on the GGUF file, or None (not importable, or the model is no GGUF file)."""
    if gguf is None:
        return None
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    # n_threads_batch (prompt processing) would otherwise default to every core
    return Llama(
        model_path=gguf, n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False
    )


def _run_llamacpp(llama, prompt: list[int], max_new_tokens: int) -> tuple[int, float]:
    """Greedy decoding of one prompt (token ids) by llama.cpp: ``(completion tokens, seconds)``."""
    llama.reset()
    time.sleep(PAUSE_S)
    start = time.perf_counter()
    out = llama.create_completion(prompt, max_tokens=max_new_tokens, temperature=0.0, top_k=1)
    return int(out["usage"]["completion_tokens"]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model name (default: the embedded SmolLM2)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each per batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 engine")
    parser.add_argument(
        "--quantized",
        nargs="*",
        choices=["int4", "int8"],
        default=["int4"],
        help="weight-only quantized engines on the bfloat16 model (none with the flag alone)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from testtime.llm.engine import Engine
    from testtime.llm.loading import load_model

    model, tokenizer = load_model(args.model)
    eos = sorted(
        {
            tokenizer.eos_token_id,
            *(
                [model.generation_config.eos_token_id]
                if isinstance(model.generation_config.eos_token_id, int)
                else (model.generation_config.eos_token_id or [])
            ),
        }
    )
    engine = Engine(model)
    model16 = None if args.no_bf16 and not args.quantized else load_model(args.model, dtype=torch.bfloat16)[0]
    engine16 = None if args.no_bf16 or model16 is None else Engine(model16)
    quantized: dict[str, Engine] = {}
    for kind in args.quantized:
        try:
            quantized[kind] = Engine(model16, quantize=kind)
        except ValueError as exc:
            print(f"no {kind} engine: {exc}")
    from testtime.llm.loading import resolve_model

    resolved = resolve_model(args.model)
    gguf = os.path.join(resolved.path, resolved.gguf_file) if resolved.gguf_file else None
    llama = _llamacpp(gguf, torch.get_num_threads())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, CPU flags {_cpu_flags()}; engine path: "
        f"{'lean' if engine.lean else 'fallback'}; bf16: "
        f"{'off' if engine16 is None else 'oneDNN' if engine16.prepack else 'F.linear (no oneDNN bf16 here)'}; "
        f"llama.cpp: {'yes' if llama is not None else 'not importable' if gguf else 'no GGUF'}; "
        f"quantized: {', '.join(quantized) or 'none'}"
    )
    # Warm up every contender (first calls allocate and pick kernels).
    warm = _prompts(tokenizer, 2)
    _run_generate(model, warm, 4, eos, tokenizer.pad_token_id)
    _run_engine(engine, warm, 4, eos)
    if engine16 is not None:
        _run_engine(engine16, warm, 4, eos)
    for q in quantized.values():
        _run_engine(q, warm, 4, eos)
    if llama is not None:
        _run_llamacpp(llama, warm[0], 4)

    summary: dict[str, object] = {
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "engine_path": "lean" if engine.lean else "fallback",
        "cpu_flags": _cpu_flags(),
        "bf16_prepacked": None if engine16 is None else engine16.prepack,
        "llamacpp": llama is not None,
        "quantized": list(quantized),
    }
    if engine16 is not None and engine16.lean:
        ceiling = _products_ceiling(engine16)
        summary["bf16_products_only_tok_s_batch1"] = round(ceiling, 1)
        print(f"bf16 batch 1, weight products alone (no attention, norms, sampling): {ceiling:.1f} tok/s")
    print(
        f"{'batch':>5} {'generate tok/s':>15} {'engine tok/s':>13} {'ratio':>6} {'tokens':>7} identical"
        f"{'' if engine16 is None else '  bf16 tok/s bf16/fp32 same-as-fp32'}"
        f"{''.join(f'  {kind} tok/s' for kind in quantized)}"
        f"{'' if llama is None else '  llama.cpp tok/s'}"
    )
    for batch in args.batch_sizes:
        prompts = _prompts(tokenizer, batch)
        gen_rates, eng_rates, ratios = [], [], []
        bf16_rates, bf16_ratios, llama_rates = [], [], []
        quant_rates: dict[str, list[float]] = {kind: [] for kind in quantized}
        identical = True
        tokens = 0
        same_rows = 0.0
        for _ in range(args.repeats):
            ref, gen_s = _run_generate(model, prompts, args.max_new_tokens, eos, tokenizer.pad_token_id)
            got, eng_s = _run_engine(engine, prompts, args.max_new_tokens, eos)
            identical &= ref == got
            tokens = sum(len(r) for r in ref)
            gen_rates.append(tokens / gen_s)
            eng_rates.append(sum(len(r) for r in got) / eng_s)
            ratios.append(eng_rates[-1] / gen_rates[-1])
            if engine16 is not None:
                got16, bf16_s = _run_engine(engine16, prompts, args.max_new_tokens, eos)
                bf16_rates.append(sum(len(r) for r in got16) / bf16_s)
                bf16_ratios.append(bf16_rates[-1] / eng_rates[-1])
                same_rows = sum(a == b for a, b in zip(got, got16, strict=True)) / len(got)
            for kind, q in quantized.items():
                got_q, q_s = _run_engine(q, prompts, args.max_new_tokens, eos)
                quant_rates[kind].append(sum(len(r) for r in got_q) / q_s)
            if llama is not None and batch == 1:
                count, llama_s = _run_llamacpp(llama, prompts[0], args.max_new_tokens)
                llama_rates.append(count / llama_s)
        gen, eng = statistics.median(gen_rates), statistics.median(eng_rates)
        ratio = statistics.median(ratios)
        line = f"{batch:>5} {gen:>15.1f} {eng:>13.1f} {ratio:>6.2f} {tokens:>7} {identical!s:>9}"
        if bf16_rates:
            bf16, bf16_ratio = statistics.median(bf16_rates), statistics.median(bf16_ratios)
            line += f"  {bf16:>10.1f} {bf16_ratio:>9.2f} {same_rows:>12.2f}"
            summary[f"bf16_tok_s_batch{batch}"] = round(bf16, 2)
            summary[f"bf16_vs_fp32_batch{batch}"] = round(bf16_ratio, 3)
            summary[f"bf16_same_rows_batch{batch}"] = round(same_rows, 3)
        for kind, rates in quant_rates.items():
            rate = statistics.median(rates)
            line += f"  {rate:>{len(kind) + 6}.1f}"
            summary[f"{kind}_tok_s_batch{batch}"] = round(rate, 2)
            if bf16_rates:
                summary[f"{kind}_vs_bf16_batch{batch}"] = round(rate / statistics.median(bf16_rates), 3)
        if llama_rates:
            llama_rate = statistics.median(llama_rates)
            line += f"  {llama_rate:>15.1f}"
            summary[f"llamacpp_tok_s_batch{batch}"] = round(llama_rate, 2)
            if bf16_rates:
                summary[f"bf16_vs_llamacpp_batch{batch}"] = round(
                    statistics.median(bf16_rates) / llama_rate, 3
                )
            for kind, rates in quant_rates.items():
                summary[f"{kind}_vs_llamacpp_batch{batch}"] = round(statistics.median(rates) / llama_rate, 3)
        print(line, flush=True)
        summary[f"generate_tok_s_batch{batch}"] = round(gen, 2)
        summary[f"engine_tok_s_batch{batch}"] = round(eng, 2)
        summary[f"ratio_batch{batch}"] = round(ratio, 3)
        summary[f"identical_batch{batch}"] = identical
        summary[f"tokens_batch{batch}"] = tokens
    summary["loadavg_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
