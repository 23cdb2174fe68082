"""Decoding at a long context: testtime.deepseek (absorbed MLA over the latent cache) vs transformers'
DeepseekV3ForCausalLM (which caches the latent too but re-expands every cached latent into per-head keys and
values at every step), same weights, same run.

A small-but-not-trivial V3 (hidden 512, 8 heads, d_c 128, d_h^R 32, d_h 64, d'_c 256, 4 layers with the first
dense, 16 experts of width 256, top-2 over 4 groups, one shared expert) is saved by transformers and loaded by
``DeepSeekV3ForCausalLM.from_pretrained``. Each model prefills a 4,096-token context once; then rounds of
``--steps`` greedy decode steps alternate between the two (the caches are cropped back to the context after
each round), and the medians of the per-round tokens/s are compared. The first decoded tokens of both are
checked to agree.

Run: ``.venv/bin/python benchmarks/deepseek_decode.py [--context 4096]``; the last line is one JSON object
with ``decode_ratio`` and the KV-cache bytes per token of both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=4096, help="tokens in the cache before decoding")
    parser.add_argument("--steps", type=int, default=8, help="decode steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    from transformers.cache_utils import DynamicCache

    from testtime.deepseek import DeepSeekV3ForCausalLM

    torch.manual_seed(0)
    hf_config = DeepseekV3Config(
        vocab_size=1024,
        hidden_size=512,
        intermediate_size=1024,
        moe_intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        n_shared_experts=1,
        n_routed_experts=16,
        num_experts_per_tok=2,
        n_group=4,
        topk_group=2,
        first_k_dense_replace=1,
        kv_lora_rank=128,
        q_lora_rank=256,
        qk_rope_head_dim=32,
        qk_nope_head_dim=64,
        v_head_dim=64,
        max_position_embeddings=8192,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 2048,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "beta_fast": 32,
            "beta_slow": 1,
        },
        num_nextn_predict_layers=0,
    )
    hf = DeepseekV3ForCausalLM(hf_config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = DeepSeekV3ForCausalLM.from_pretrained(tmp).eval()
    context = torch.randint(0, 1024, (1, args.context))

    with torch.no_grad():
        start = time.perf_counter()
        cache = ours.new_cache(1, capacity=args.context + args.steps + 1)
        ours_first = ours(context, cache=cache).logits[:, -1].argmax(-1)
        ours_prefill = time.perf_counter() - start
        start = time.perf_counter()
        hf_cache = DynamicCache(config=hf_config)
        hf_first = hf(context, cache=hf_cache, use_cache=True).logits[:, -1].argmax(-1)
        hf_prefill = time.perf_counter() - start
        assert torch.equal(ours_first, hf_first), "the two models disagree on the first token"

        def run_ours() -> tuple[float, list[int]]:
            tok, out = ours_first[:, None], []
            begin = time.perf_counter()
            for _ in range(args.steps):
                tok = ours(tok, cache=cache).logits[:, -1].argmax(-1, keepdim=True)
                out.append(int(tok))
            elapsed = time.perf_counter() - begin
            cache.crop(args.context)
            return elapsed, out

        def run_hf() -> tuple[float, list[int]]:
            tok, out = hf_first[:, None], []
            begin = time.perf_counter()
            for _ in range(args.steps):
                tok = hf(tok, cache=hf_cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
                out.append(int(tok))
            elapsed = time.perf_counter() - begin
            hf_cache.crop(-args.steps)
            return elapsed, out

        times: dict[str, list[float]] = {"testtime": [], "transformers": []}
        for _ in range(args.rounds):
            t_ours, tokens_ours = run_ours()
            t_hf, tokens_hf = run_hf()
            times["testtime"].append(args.steps / t_ours)
            times["transformers"].append(args.steps / t_hf)
        agree = sum(a == b for a, b in zip(tokens_ours, tokens_hf, strict=True)) / args.steps

    hf_bytes = (
        sum(
            layer.keys.numel() * layer.keys.element_size()
            + layer.values.numel() * layer.values.element_size()
            for layer in hf_cache.layers
        )
        / hf_cache.get_seq_length()
    )
    rates = {name: statistics.median(v) for name, v in times.items()}
    print(
        f"context {args.context}, {args.steps} steps x {args.rounds} rounds, threads {torch.get_num_threads()}"
    )
    print(f"prefill: testtime {ours_prefill:.2f} s, transformers {hf_prefill:.2f} s")
    for name, rate in rates.items():
        print(f"{name:>14}: {rate:8.1f} tokens/s (median), rounds {[round(v, 1) for v in times[name]]}")
    print(f"greedy tokens agreeing: {agree:.0%}")
    result = {
        "decode_ratio": rates["testtime"] / rates["transformers"],
        "tokens_per_s": rates,
        "kv_cache_bytes_per_token": {"testtime": cache.bytes_per_token(), "transformers": hf_bytes},
        "context": args.context,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
