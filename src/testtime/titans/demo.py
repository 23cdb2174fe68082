"""The Titans part of ``testtime demo``: a neural memory that learns a needle at test time, and forgets it.

A linear Titans memory (L_M = 1) reads a haystack of 4 key->value pairs repeated over and over, with one
surprising needle pair at a random place in the first half, and is then queried with the needle's key.
No outer training: the memory's weights are updated by eqs. 9-14 alone while it reads. The needle counts
as recalled when the retrieved vector is closer (cosine) to the needle's value than to the filler values
and 27 random distractors. The reading printed under the table (:func:`reading`) is computed from the
measured recalls: with and without the forgetting gate, at the shortest and the longest haystack.

Which memory: the first part runs the paper's plain linear memory (eqs. 9-14, no output normalisation,
theta = 0.5 at chunk size 1). The bundled trained MAC model uses the package's stabilised defaults, which
are not in the paper: the memory's output is RMS-normalised and theta_t is capped at 1 / chunk size
(docs/fidelity/titans.md, "Deviations"); the demo says so where it reports that model's numbers.

Shapes: r trials, n tokens, d key width.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
import typer

from testtime.demo_base import DemoContext, DemoSection
from testtime.titans.config import MemoryConfig, TitansConfig
from testtime.titans.memory import memory_scan
from testtime.titans.models import TitansLM

__all__ = ["needle_batch", "needle_model", "needle_model_accuracy", "needle_recall", "reading", "run"]

STABILISED = (
    "stabilised defaults, not the paper's plain memory: RMS-normalised memory output and theta_t capped at "
    "1 / chunk size (docs/fidelity/titans.md)"
)

# The pass-key task of experiments/titans_needle.py, which trained the bundled checkpoint
# (src/testtime/data/titans_needle/mac_seed0.safetensors: 600 steps at length 64, needles anywhere).
MARK, QUERY, NUM_KEYS, NUM_VALUES, NUM_FILLER = 0, 1, 16, 16, 32
NEEDLE_VOCAB = 2 + NUM_KEYS + NUM_VALUES + NUM_FILLER
NEEDLE_CHECKPOINT = Path(__file__).resolve().parents[1] / "data" / "titans_needle" / "mac_seed0.safetensors"


def needle_batch(
    size: int, length: int, gen: torch.Generator, span: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor]:
    """A pass-key batch: random filler, ``MARK key value`` in the first ``span`` of it, ``QUERY key`` last.

    Returns:
        ``(ids (size, length), answers (size,))``: the model must predict ``value`` after the last token.
    """
    ids = 2 + NUM_KEYS + NUM_VALUES + torch.randint(0, NUM_FILLER, (size, length), generator=gen)
    keys = 2 + torch.randint(0, NUM_KEYS, (size,), generator=gen)
    values = 2 + NUM_KEYS + torch.randint(0, NUM_VALUES, (size,), generator=gen)
    pos = torch.randint(0, max(1, min(length - 5, int(length * span))), (size,), generator=gen)
    rows = torch.arange(size)
    ids[rows, pos], ids[rows, pos + 1], ids[rows, pos + 2] = MARK, keys, values
    ids[:, -2], ids[:, -1] = QUERY, keys
    return ids, values


def needle_model(variant: str = "mac", seed: int = 0) -> TitansLM:
    """The 2-layer, 16-token-window model of the pass-key experiment (randomly initialised)."""
    torch.manual_seed(seed)
    memory = MemoryConfig(dim=64, num_heads=2, depth=2, expansion=2.0, chunk_size=8)
    cfg = TitansConfig(
        variant=variant, vocab_size=NEEDLE_VOCAB, dim=64, num_layers=2, num_attn_heads=4, window=16,
        num_persistent=4, mlp_ratio=2.0, memory=memory,
    )  # fmt: skip
    return TitansLM(cfg)


def needle_model_accuracy(model: TitansLM, length: int, samples: int, seed: int) -> float:
    """Answer accuracy on fresh pass-key samples whose needle lies in the first quarter (beyond the window)."""
    gen = torch.Generator().manual_seed(10_000 + seed + length)
    ids, answers = needle_batch(samples, length, gen)
    with torch.no_grad():
        logits = model(ids).logits[:, -1]
    return (logits.argmax(-1) == answers).float().mean().item()


def _trained_model_section(ctx: DemoContext) -> list[str]:
    """The bundled trained MAC model answers pass-key queries at growing lengths."""
    if not NEEDLE_CHECKPOINT.is_file():
        return []
    from safetensors.torch import load_model

    model = needle_model("mac")
    load_model(model, str(NEEDLE_CHECKPOINT))
    model.eval()
    lengths = [64, 256] if ctx.quick else [64, 128, 256, 512]
    samples = 32 if ctx.quick else 128
    start = time.perf_counter()
    acc = [needle_model_accuracy(model, n, samples, ctx.seed) for n in lengths]
    typer.echo(
        "trained MAC, pass-key accuracy: "
        + ", ".join(f"{n}: {a:.2f}" for n, a in zip(lengths, acc, strict=True))
    )
    return [
        "",
        "**A trained tiny Titans (MAC) model recalls a needle.** The bundled 2-layer MAC model (about 0.1M "
        "parameters, attention window 16 tokens, trained 600 steps at length 64 by "
        "`experiments/titans_needle.py --seeds 0 --variants mac --train-span 1.0`) reads filler with "
        "`MARK key value` in its first quarter and must answer `QUERY key` at the end: the needle is always "
        f"beyond the attention window, so only the memory can carry it ({samples} fresh samples per length, "
        "chance 0.06; the same-window attention baseline stays at chance, see experiments/titans_needle). "
        f"The model was trained and runs with the package's {STABILISED}.",
        "",
        "| tokens | " + " | ".join(str(n) for n in lengths) + " |",
        "|---|" + "---|" * len(lengths),
        "| accuracy | " + " | ".join(f"{a:.2f}" for a in acc) + " |",
        "",
        f"({time.perf_counter() - start:.1f} s)",
    ]


def needle_recall(
    length: int, *, alpha: float, theta: float = 0.5, d: int = 32, trials: int = 16, seed: int = 0
) -> float:
    """Share of trials in which a linear memory recalls the needle after ``length`` haystack tokens.

    Args:
        length: tokens (filler plus the needle).
        alpha: forgetting gate alpha_t (constant).
        theta: learning rate theta_t (0.5 writes a unit key's value exactly: 2 theta ||k||^2 = 1).
        d: key / value width.
        trials: independent haystacks.
        seed: the random source.

    Returns:
        Recall in [0, 1].
    """
    gen = torch.Generator().manual_seed(seed)
    filler_k = F.normalize(torch.randn(trials, 4, d, generator=gen), dim=-1)
    filler_v = torch.randn(trials, 4, d, generator=gen)
    needle_k = F.normalize(torch.randn(trials, d, generator=gen), dim=-1)
    needle_v = torch.randn(trials, d, generator=gen)
    pick = torch.randint(0, 4, (trials, length), generator=gen)[..., None].expand(-1, -1, d)
    k, v = filler_k.gather(1, pick), filler_v.gather(1, pick)
    where = torch.randint(0, length // 2, (trials,), generator=gen)
    rows = torch.arange(trials)
    k[rows, where], v[rows, where] = needle_k, needle_v
    theta_t = torch.full((trials, length), theta)
    log_gamma = torch.full((trials, length), 1.0 - alpha).log() if alpha > 0 else None
    weights = [torch.zeros(trials, d, d)]  # M_0 = 0
    _, weights, _ = memory_scan(k, k, v, theta_t, None, log_gamma, weights, [], chunk_size=1)
    retrieved = needle_k[:, None] @ weights[0]  # eq. 15, a read without update
    candidates = torch.cat([needle_v[:, None], filler_v, torch.randn(trials, 27, d, generator=gen)], dim=1)
    sims = (F.normalize(retrieved, dim=-1) @ F.normalize(candidates, dim=-1).mT)[:, 0]
    return (sims[:, 0] > sims[:, 1:].max(-1).values).float().mean().item()


def reading(lengths: list[int], table: dict[float, list[float]], *, margin: float = 0.1) -> str:
    """One or two sentences that say what the measured recall table shows (no fixed conclusion).

    Args:
        lengths: haystack lengths, ascending.
        table: recall per forgetting rate alpha (one value per length); must contain alpha = 0.
        margin: differences smaller than this count as "about the same".

    Returns:
        The reading.
    """
    short, long = lengths[0], lengths[-1]
    plain = table[0.0]
    strongest = max(table)

    def trend(values: list[float]) -> str:
        if values[-1] < values[0] - margin:
            return f"falls from {values[0]:.2f} at {short} tokens to {values[-1]:.2f} at {long}"
        if values[-1] > values[0] + margin:
            return f"rises from {values[0]:.2f} at {short} tokens to {values[-1]:.2f} at {long}"
        return f"stays about the same ({values[0]:.2f} at {short} tokens, {values[-1]:.2f} at {long})"

    text = f"Without forgetting, recall {trend(plain)}"
    if strongest == 0.0:
        return text + "."
    text += f"; with alpha = {strongest} it {trend(table[strongest])}."
    gap = plain[-1] - table[strongest][-1]
    if gap > margin:
        text += (
            f" At {long} tokens forgetting costs {gap:.2f} of recall: the needle fades as the haystack grows."
        )
    elif gap < -margin:
        text += f" At {long} tokens forgetting helps by {-gap:.2f}."
    else:
        text += f" At {long} tokens forgetting makes no visible difference."
    return text


def run(ctx: DemoContext) -> DemoSection:
    """Recall of the needle against haystack length, with and without forgetting; a table and a plot."""
    lengths = [64, 256] if ctx.quick else [64, 256, 1024, 2048]
    alphas = [0.0, 0.003, 0.03]
    trials = 8 if ctx.quick else 16
    table: dict[float, list[float]] = {}
    start = time.perf_counter()
    for alpha in alphas:
        table[alpha] = [needle_recall(n, alpha=alpha, trials=trials, seed=ctx.seed) for n in lengths]
        typer.echo(
            f"alpha={alpha}: "
            + ", ".join(f"{n}: {r:.2f}" for n, r in zip(lengths, table[alpha], strict=True))
        )
    lines = [
        "A linear Titans memory reads a haystack of 4 repeated key->value pairs with one surprising needle "
        "pair in the first half, learning at test time by eqs. 9-14 (no outer training), then is asked for "
        f"the needle ({trials} trials per cell, recall = retrieved value closest to the needle's among 32).",
        "",
        "| forgetting alpha | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
        "|---|" + "---|" * len(lengths),
    ]
    lines += [f"| {a} | " + " | ".join(f"{r:.2f}" for r in table[a]) + " |" for a in alphas]
    lines += [
        "",
        reading(lengths, table),
        "This is the paper's plain linear memory (no output normalisation, theta = 0.5 at chunk size 1); a "
        f"trained Titans model learns alpha_t, theta_t and eta_t per token. ({time.perf_counter() - start:.1f} s)",
    ]
    lines += _trained_model_section(ctx)
    figures = []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        for a in alphas:
            ax.plot(lengths, table[a], marker="o", label=f"alpha = {a}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("haystack tokens")
        ax.set_ylabel("needle recall")
        ax.set_ylim(-0.05, 1.05)
        ax.legend()
        ax.set_title("Titans memory: a needle learned at test time")
        fig.tight_layout()
        path = ctx.out_dir / "titans_needle.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        figures.append(path)
    except ModuleNotFoundError:
        pass
    return DemoSection(
        title="Titans: a memory that learns at test time", markdown="\n".join(lines), figures=figures
    )
