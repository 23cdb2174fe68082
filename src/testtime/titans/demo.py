"""The Titans part of ``testtime demo``: a neural memory that learns a needle at test time, and forgets it.

A linear Titans memory (L_M = 1) reads a haystack of 4 key->value pairs repeated over and over, with one
surprising needle pair at a random place in the first half, and is then queried with the needle's key.
No outer training: the memory's weights are updated by eqs. 9-14 alone while it reads. The needle counts
as recalled when the retrieved vector is closer (cosine) to the needle's value than to the filler values
and 27 random distractors. Without forgetting (alpha = 0) the needle survives any haystack length, since
the filler only rewrites its own key directions; with the forgetting gate alpha > 0 it fades as the
haystack grows, the trade-off that eq. 13 learns to manage in a trained model.

Shapes: t trials, n tokens, d key width.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
import typer

from testtime.demo import DemoContext, DemoSection
from testtime.titans.memory import memory_scan

__all__ = ["needle_recall", "run"]


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
        "Without forgetting the needle survives (the filler only rewrites its own key directions); the "
        "forgetting gate makes it fade as the haystack grows. A trained Titans model learns alpha_t, "
        f"theta_t and eta_t per token to balance the two. ({time.perf_counter() - start:.1f} s)",
    ]
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
