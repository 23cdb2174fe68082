"""Miniature reproduction of DeepSeek-V3's load-balancing and MTP ablations (Sections 4.5.1-4.5.3).

A tiny byte-level DeepSeek-V3 (3 layers: 1 dense + 2 MoE of 16 routed experts top-2 over 4 groups, one
shared expert) is trained from scratch on two domains, Python code (the standard library) and prose
(tinyshakespeare), mixed half and half in every batch. Variants, each with several seeds:

* none: no balancing at all;
* seq-aux(alpha): the sequence-wise f*P auxiliary loss (the paper's baseline), several alpha;
* batch-aux(alpha): the batch-wise f*P auxiliary loss;
* aux-free(gamma): the routing-bias update only, several gamma;
* v3: the routing-bias update plus the complementary sequence-wise loss with alpha = 1e-4 (V3's combination);
* v3+mtp: v3 with one MTP module (lambda 0.3); v3 is its MTP-off baseline.

Reported per variant (mean and std over seeds): validation bits per byte (code, prose, both), MaxVio_batch
(mean over the validation batches) and MaxVio_global (loads summed over the whole validation set), dead
experts, and the domain specialisation (half the L1 distance between the code and the prose expert-load
distributions, mean over MoE layers); for v3+mtp also the self-speculative acceptance rate and speedup.
Writes ``results.json``, ``results.md`` and ``frontier.png`` next to this file (or to --out).

What this scale can and cannot show: the paper's effects on quality are a few thousandths of a bit per byte
at 16B-230B parameters and 1.33T tokens; a 0.3M-parameter model trained for a few hundred steps has seed
noise of about a hundredth of a bit, so only the balance side (MaxVio, dead experts, specialisation) and large
quality effects (a too-large alpha) can be resolved here.

Run: ``.venv/bin/python experiments/deepseek_balance/run.py [--quick] [--steps 250] [--seeds 3]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from testtime.deepseek.balance import LoadTracker, update_routing_bias
from testtime.deepseek.generate import generate
from testtime.deepseek.mtp import speculative_generate
from testtime.deepseek.train import DeepSeekV3ForTraining, small_config

HERE = Path(__file__).resolve().parent

VARIANTS: dict[str, dict[str, object]] = {
    "none": dict(balance_loss="none", balance_loss_alpha=0.0, bias_update_speed=0.0),
    "seq-aux(1e-3)": dict(balance_loss="sequence", balance_loss_alpha=1e-3, bias_update_speed=0.0),
    "seq-aux(1e-2)": dict(balance_loss="sequence", balance_loss_alpha=1e-2, bias_update_speed=0.0),
    "seq-aux(1e-1)": dict(balance_loss="sequence", balance_loss_alpha=1e-1, bias_update_speed=0.0),
    "batch-aux(1e-2)": dict(balance_loss="batch", balance_loss_alpha=1e-2, bias_update_speed=0.0),
    "aux-free(1e-3)": dict(balance_loss="none", balance_loss_alpha=0.0, bias_update_speed=1e-3),
    "aux-free(1e-2)": dict(balance_loss="none", balance_loss_alpha=0.0, bias_update_speed=1e-2),
    "v3": dict(balance_loss="sequence", balance_loss_alpha=1e-4, bias_update_speed=1e-2),
}
for _overrides in VARIANTS.values():
    _overrides["num_nextn_predict_layers"] = 0  # the balancing ablations train without MTP, as the paper's
MTP_VARIANTS: dict[str, dict[str, object]] = {
    "v3+mtp": dict(VARIANTS["v3"], num_nextn_predict_layers=1, mtp_loss_weight=0.3),
}


def load_domains(max_bytes: int) -> dict[str, torch.Tensor]:
    """``{"code": bytes, "prose": bytes}`` as int64 tensors of at most ``max_bytes`` each."""
    from testtime.train.data import shakespeare_documents, stdlib_documents

    out = {}
    for name, docs in (("code", stdlib_documents()), ("prose", shakespeare_documents())):
        text = "".join(doc.text for doc in docs)
        out[name] = torch.tensor(list(text.encode("utf-8")[:max_bytes]), dtype=torch.long)
    return out


def windows(data: torch.Tensor, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping training windows (first 90%) and validation windows (last 10%) of ``seq + 1`` bytes."""
    split = int(0.9 * len(data))
    train = data[: (split // (seq + 1)) * (seq + 1)].view(-1, seq + 1)
    val_part = data[split:]
    val = val_part[: (len(val_part) // (seq + 1)) * (seq + 1)].view(-1, seq + 1)
    return train, val


# The table in results.md was measured with the released code's routing rules, which were the package's
# defaults then: groups scored by their top-2 affinities, and eq. 18's f_i counting the routed experts. The
# paper's rules (now the defaults: top K_r/M = 1 per group at this shape, f_i over the top-K_r unbiased
# affinities) are `--paper-rules`.
RELEASE_RULES: dict[str, object] = {"group_score_topk": 2, "balance_loss_counts": "routed"}


def run_one(
    name: str, overrides: dict[str, object], *, seed: int, steps: int, batch: int, seq: int, domains: dict
) -> dict[str, object]:
    """Train one variant with one seed and evaluate it."""
    torch.manual_seed(seed)
    config = small_config().replace(
        num_hidden_layers=3, max_position_embeddings=512, **{**RELEASE_RULES, **overrides}
    )
    model = DeepSeekV3ForTraining(config)
    model.reset_parameters(seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    data = {d: windows(t, seq) for d, t in domains.items()}
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        lr = 3e-3 * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows = [
            data[d][0][torch.randint(0, len(data[d][0]), (batch // 2,), generator=g)]
            for d in ("code", "prose")
        ]
        x = torch.cat(rows)
        out = model(x[:, :-1], x[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        update_routing_bias(model, config.bias_update_speed)
    train_seconds = time.perf_counter() - start
    model.eval()
    tracker = LoadTracker(model)
    bpb: dict[str, float] = {}
    with torch.no_grad():
        for d in ("code", "prose"):
            val = data[d][1][:32]
            losses = []
            for chunk in val.split(8):
                losses.append(float(model(chunk[:, :-1], chunk[:, 1:]).lm_loss) * chunk.shape[0])
                tracker.record(d)
            bpb[d] = sum(losses) / len(val) / math.log(2)
    summary = tracker.summary()
    loads = {d: torch.tensor(v) for d, v in summary["domain_load"].items()}  # (layers, E) fractions
    specialisation = float((loads["code"] - loads["prose"]).abs().sum(-1).mean() / 2)
    result: dict[str, object] = {
        "variant": name,
        "seed": seed,
        "bpb_code": bpb["code"],
        "bpb_prose": bpb["prose"],
        "bpb": (bpb["code"] + bpb["prose"]) / 2,
        "maxvio_batch": summary["maxvio_batch"],
        "maxvio_global": summary["maxvio_global"],
        "dead_experts": sum(summary["dead_experts"]),
        "specialisation": specialisation,
        "train_seconds": train_seconds,
    }
    if len(model.mtp):
        prompt = data["prose"][1][40:41, :32]
        with torch.no_grad():
            begin = time.perf_counter()
            plain = generate(model, prompt, max_new_tokens=64)
            plain_s = time.perf_counter() - begin
            spec, stats = speculative_generate(model, prompt, max_new_tokens=64)
        assert torch.equal(plain, spec)
        result["acceptance"] = stats.acceptance_rate
        result["tokens_per_step"] = stats.tokens_per_step
        result["speedup"] = plain_s / stats.seconds
    return result


def aggregate(results: list[dict[str, object]]) -> list[dict[str, object]]:
    """Mean and std over seeds per variant, plus the bpb difference to "none" paired by seed."""
    rows = []
    base = {r["seed"]: r["bpb"] for r in results if r["variant"] == "none"}
    for name in dict.fromkeys(r["variant"] for r in results):
        runs = [r for r in results if r["variant"] == name]
        row: dict[str, object] = {"variant": name, "seeds": len(runs)}
        paired = [float(r["bpb"]) - float(base[r["seed"]]) for r in runs if r["seed"] in base]  # type: ignore[arg-type]
        if paired:
            row["delta_bpb"] = statistics.mean(paired)
            row["delta_bpb_std"] = statistics.stdev(paired) if len(paired) > 1 else 0.0
        for key in runs[0]:
            if key in ("variant", "seed"):
                continue
            values = [float(r[key]) for r in runs]  # type: ignore[arg-type]
            row[key] = statistics.mean(values)
            row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def write_report(rows: list[dict[str, object]], out: Path, args: argparse.Namespace) -> None:
    lines = [
        f"# DeepSeek-V3 balancing ablation (miniature): {args.steps} steps, batch {args.batch} x {args.seq} bytes, "
        f"{args.seeds} seeds",
        "",
        "| variant | bpb (both) | Δ bpb vs none, paired | bpb code | bpb prose | MaxVio batch | MaxVio global "
        "| dead experts | specialisation |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        delta = f"{r['delta_bpb']:+.3f} ± {r['delta_bpb_std']:.3f}" if "delta_bpb" in r else "-"
        lines.append(
            f"| {r['variant']} | {r['bpb']:.3f} ± {r['bpb_std']:.3f} | {delta} | {r['bpb_code']:.3f} | {r['bpb_prose']:.3f} | "
            f"{r['maxvio_batch']:.2f} ± {r['maxvio_batch_std']:.2f} | {r['maxvio_global']:.2f} ± "
            f"{r['maxvio_global_std']:.2f} | {r['dead_experts']:.1f} | {r['specialisation']:.2f} |"
        )
    mtp = [r for r in rows if "acceptance" in r]
    if mtp:
        lines += [
            "",
            "| variant | acceptance | tokens per main step | speculative speedup |",
            "|---|---|---|---|",
        ]
        for r in mtp:
            lines.append(
                f"| {r['variant']} | {r['acceptance']:.0%} ± {r['acceptance_std']:.0%} | {r['tokens_per_step']:.2f} | "
                f"{r['speedup']:.2f}x |"
            )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4))
        for r in rows:
            if r["variant"].endswith("+mtp"):
                continue
            ax.errorbar(
                r["maxvio_global"],
                r["delta_bpb"],
                xerr=r["maxvio_global_std"],
                yerr=r["delta_bpb_std"],
                fmt="o",
                capsize=3,
            )
            ax.annotate(
                r["variant"],
                (r["maxvio_global"], r["delta_bpb"]),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
        ax.set_xlabel("MaxVio global (validation)")
        ax.set_ylabel("validation bits per byte minus 'none' (same seed)")
        ax.set_title("Balance vs quality (lower-left is better)")
        fig.tight_layout()
        fig.savefig(out / "frontier.png", dpi=120)
        plt.close(fig)
    except ImportError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="2 variants, 1 seed, 5 steps (a smoke test)")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="*", default=None, help="run only these variants")
    parser.add_argument(
        "--paper-rules",
        action="store_true",
        help="route and count eq. 18 by the paper's rules (the package defaults) instead of the release's",
    )
    parser.add_argument(
        "--from-json", type=Path, nargs="*", default=None, help="only rebuild the report from results files"
    )
    args = parser.parse_args()
    if args.from_json:
        merged: dict[tuple[str, int], dict[str, object]] = {}
        for path in args.from_json:  # later files replace earlier runs of the same variant and seed
            for r in json.loads(path.read_text()):
                merged[(str(r["variant"]), int(r["seed"]))] = r  # type: ignore[call-overload]
        results = list(merged.values())
        args.seeds = max(int(r["seed"]) for r in results) + 1  # type: ignore[call-overload]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        write_report(aggregate(results), args.out, args)
        print((args.out / "results.md").read_text())
        return
    torch.set_num_threads(args.threads)
    if args.paper_rules:
        RELEASE_RULES.clear()
    variants = {**VARIANTS, **MTP_VARIANTS}
    if args.variants:
        unknown = set(args.variants) - set(variants)
        if unknown:
            raise SystemExit(f"unknown variants {sorted(unknown)}; known: {list(variants)}")
        variants = {k: variants[k] for k in args.variants}
    if args.quick:
        args.steps, args.seeds = 5, 1
        variants = {k: variants[k] for k in ("none", "v3+mtp")}
    domains = load_domains(2_000_000)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, overrides in variants.items():
        for seed in range(args.seeds):
            r = run_one(
                name, overrides, seed=seed, steps=args.steps, batch=args.batch, seq=args.seq, domains=domains
            )
            print(json.dumps(r), flush=True)
            results.append(r)
            (args.out / "results.json").write_text(json.dumps(results, indent=1))
    rows = aggregate(results)
    write_report(rows, args.out, args)
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
