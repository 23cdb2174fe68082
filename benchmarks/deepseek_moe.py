"""DeepSeekMoE layer forward + backward: testtime.deepseek vs transformers' DeepseekV3MoE, same weights, same run.

The configuration (hidden 256, 32 routed experts of width 128, top-4 with node-limited routing over 4 groups,
one shared expert, batches of 8 x 512 tokens) is timed for both implementations interleaved, several rounds,
and the medians are compared. transformers is timed with its default experts implementation (what
``from_pretrained`` picks: ``grouped_mm``) and with ``eager`` (a loop over the hit experts).

The achieved GFLOP/s counts the expert and router matmuls of forward and backward (3x the forward FLOPs) and
is set against this machine's matmul peak, measured here as the best of several float32 GEMMs.

Run: ``.venv/bin/python benchmarks/deepseek_moe.py [--rounds 7]``; the last line is one JSON object with
``moe_ratio`` (ours / transformers default, tokens/s) and ``moe_fraction_of_peak``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _peak_gflops(size: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    from testtime.deepseek import DeepSeekV3Config
    from testtime.deepseek.moe import MoE

    hidden, experts, width, top_k, groups, topk_groups = 256, 32, 128, 4, 4, 2
    ours_config = DeepSeekV3Config.tiny(
        hidden_size=hidden,
        moe_intermediate_size=width,
        n_routed_experts=experts,
        num_experts_per_tok=top_k,
        n_shared_experts=1,
        n_group=groups,
        topk_group=topk_groups,
        balance_loss="none",
    )
    hf_models = {}
    for impl in ("grouped_mm", "eager"):
        hf_config = DeepseekV3Config(
            hidden_size=hidden,
            moe_intermediate_size=width,
            n_routed_experts=experts,
            num_experts_per_tok=top_k,
            n_shared_experts=1,
            n_group=groups,
            topk_group=topk_groups,
            routed_scaling_factor=2.5,
        )
        hf_config._experts_implementation = impl
        hf_models[f"transformers_{impl}"] = DeepseekV3MoE(hf_config)
    torch.manual_seed(0)
    ours = MoE(ours_config)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.05)
        ours.gate.e_score_correction_bias.normal_(0, 0.01)
        for hf in hf_models.values():
            hf.gate.weight.copy_(ours.gate.weight)
            hf.gate.e_score_correction_bias.copy_(ours.gate.e_score_correction_bias)
            hf.experts.gate_up_proj.copy_(ours.experts.gate_up_proj)
            hf.experts.down_proj.copy_(ours.experts.down_proj)
            hf.shared_experts.load_state_dict(ours.shared_experts.state_dict())
    ours.train()
    impls = {"testtime": ours, **hf_models}

    x = torch.randn(args.batch, args.seq, hidden)
    weight = torch.randn(args.batch, args.seq, hidden)
    outputs = {}
    for name, module in impls.items():
        inp = x.clone().requires_grad_(True)
        out = module(inp)
        (out * weight).sum().backward()
        outputs[name] = (out.detach(), inp.grad, module.experts.down_proj.grad.clone())
        module.zero_grad(set_to_none=True)
    for name in hf_models:
        for a, b in zip(outputs["testtime"], outputs[name], strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)

    def step(module: torch.nn.Module) -> float:
        inp = x.clone().requires_grad_(True)
        start = time.perf_counter()
        out = module(inp)
        (out * weight).sum().backward()
        elapsed = time.perf_counter() - start
        module.zero_grad(set_to_none=True)
        return elapsed

    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(args.rounds):
        for name, module in impls.items():
            times[name].append(step(module))
    tokens = args.batch * args.seq
    rates = {name: tokens / statistics.median(t) for name, t in times.items()}
    forward_flops = tokens * (2 * hidden * experts + (top_k + 1) * 6 * hidden * width)
    gflops = 3 * forward_flops * rates["testtime"] / tokens / 1e9
    peak = max(_peak_gflops() for _ in range(3))
    for name, rate in rates.items():
        print(f"{name:>24}: {rate:10.0f} tokens/s  (median of {args.rounds}, fwd+bwd)")
    print(f"threads {torch.get_num_threads()}, testtime {gflops:.1f} GFLOP/s, matmul peak {peak:.1f} GFLOP/s")
    result = {
        "moe_ratio": rates["testtime"] / rates["transformers_grouped_mm"],
        "moe_ratio_vs_eager": rates["testtime"] / rates["transformers_eager"],
        "moe_fraction_of_peak": gflops / peak,
        "tokens_per_s": rates,
        "gflops": gflops,
        "peak_gflops": peak,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
