"""The DeepSeek-V3 part of ``testtime demo``: a tiny V3 trained for about a minute, twice, on the bundled
Shakespeare bytes, once without any balancing and once with the auxiliary-loss-free routing-bias update;
MaxVio per step for both (plot), then self-speculative decoding with the trained MTP module.

gamma is 0.01 here instead of the paper's 0.001: the demo runs ~100 steps, not ~100,000, and the bias must be
able to move by about the spread of the affinities within that many steps.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import typer

from testtime.demo_base import DemoContext, DemoSection

__all__ = ["run"]


def _batches(seq_len: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training windows and a validation batch of Shakespeare bytes (random bytes if the corpus is missing)."""
    try:
        from testtime.train.data import shakespeare_documents

        text = "\n".join(doc.text for doc in shakespeare_documents())
        data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    except (ImportError, AttributeError, OSError):
        data = torch.randint(0, 256, (200_000,), generator=torch.Generator().manual_seed(seed))
    split = int(0.9 * len(data))
    usable = (split - 1) // seq_len * seq_len
    train = data[:usable].view(-1, seq_len)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(split, len(data) - seq_len - 1, (batch_size,), generator=g)
    val = torch.stack([data[s : s + seq_len] for s in starts.tolist()])
    return train, val


def _train(
    *,
    gamma: float,
    steps: int | None,
    seconds: float,
    train: torch.Tensor,
    val: torch.Tensor,
    seed: int,
    batch: int,
) -> tuple[object, list[float], float, int]:
    """One run; returns (model, MaxVio per step, validation loss, steps done)."""
    from testtime.deepseek.balance import update_routing_bias
    from testtime.deepseek.train import DeepSeekV3ForTraining, small_config

    torch.manual_seed(seed)
    config = small_config().replace(
        num_hidden_layers=3, balance_loss="none", bias_update_speed=gamma, max_position_embeddings=512
    )
    model = DeepSeekV3ForTraining(config)
    model.reset_parameters(seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    order = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))
    vio: list[float] = []
    start = time.perf_counter()
    step = 0
    model.train()
    while (steps is None and time.perf_counter() - start < seconds) or (steps is not None and step < steps):
        rows = order[(step * batch) % len(order) : (step * batch) % len(order) + batch]
        x = train[rows]
        out = model(x[:, :-1], x[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        vio.append(float(out.metrics["maxvio_batch"]))
        update_routing_bias(model, gamma)
        step += 1
    model.eval()
    with torch.no_grad():
        val_loss = float(model(val[:, :-1], val[:, 1:]).lm_loss)
    return model, vio, val_loss, step


def run(ctx: DemoContext) -> DemoSection:
    """Train twice (no balancing / bias update), plot MaxVio, decode speculatively; return the report section.

    Runs on one thread (restored afterwards): at this size a second thread gains little on an idle machine and
    costs several times over on a shared one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(ctx)
    finally:
        torch.set_num_threads(threads)


def _run(ctx: DemoContext) -> DemoSection:
    from testtime.deepseek.generate import generate
    from testtime.deepseek.mtp import speculative_generate

    seconds = 1.5 if ctx.quick else 25.0
    batch, seq_len = 8, 65
    train, val = _batches(seq_len, batch, ctx.seed)
    typer.echo(f"training a tiny DeepSeek-V3 without balancing for ~{seconds:.0f} s ...")
    _, vio_none, val_none, steps = _train(
        gamma=0.0, steps=None, seconds=seconds, train=train, val=val, seed=ctx.seed, batch=batch
    )
    typer.echo(f"  {steps} steps, final MaxVio {vio_none[-1]:.2f}, validation loss {val_none:.3f}")
    typer.echo(f"training the same model with the routing-bias update (gamma 0.01) for {steps} steps ...")
    model, vio_bias, val_bias, _ = _train(
        gamma=0.01, steps=steps, seconds=seconds, train=train, val=val, seed=ctx.seed, batch=batch
    )
    typer.echo(f"  final MaxVio {vio_bias[-1]:.2f}, validation loss {val_bias:.3f}")

    tail = max(1, len(vio_none) // 4)
    mean_none = sum(vio_none[-tail:]) / tail
    mean_bias = sum(vio_bias[-tail:]) / tail
    figures: list[Path] = []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(vio_none, label="no balancing")
        ax.plot(vio_bias, label="aux-loss-free bias update")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("MaxVio (batch, mean over MoE layers)")
        ax.set_title("Tiny DeepSeek-V3 on Shakespeare bytes")
        ax.legend()
        fig.tight_layout()
        path = ctx.out_dir / "deepseek_maxvio.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        figures.append(path)
    except ImportError:
        typer.echo("matplotlib is not installed: no plot")

    prompt = val[:1, :24]
    new = 8 if ctx.quick else 48
    start = time.perf_counter()
    plain = generate(model, prompt, max_new_tokens=new)
    plain_s = time.perf_counter() - start
    spec, stats = speculative_generate(model, prompt, max_new_tokens=new)
    assert torch.equal(spec, plain), "speculative decoding must reproduce greedy decoding"
    speedup = plain_s / stats.seconds
    text = bytes(t for t in spec[0, 24:].tolist() if t < 256).decode("utf-8", errors="replace")
    typer.echo(
        f"speculative decoding: acceptance {stats.acceptance_rate:.0%}, {stats.tokens_per_step:.2f} tokens per "
        f"main step, {speedup:.2f}x the plain greedy decoder; continuation {text!r}"
    )
    markdown = "\n".join(
        [
            f"A 3-layer DeepSeek-V3 (MLA, 16 routed experts top-2 over 4 groups, one shared expert, one MTP "
            f"module; {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters) trained {steps} AdamW "
            f"steps on Shakespeare bytes (batches of {batch} x {seq_len - 1} tokens), twice from the same "
            "initialisation and data order.",
            "",
            "| run | MaxVio, last quarter (mean) | validation loss (nats/byte) |",
            "|---|---|---|",
            f"| no balancing | {mean_none:.2f} | {val_none:.3f} |",
            f"| routing-bias update (gamma 0.01) | {mean_bias:.2f} | {val_bias:.3f} |",
            "",
            "MaxVio = max_i load_i / mean load - 1 per batch (0 is perfectly balanced). gamma is 10x the paper's "
            "because this run is ~1,000x shorter.",
            "",
            f"Self-speculative greedy decoding with the MTP module as drafter: acceptance "
            f"{stats.acceptance_rate:.0%}, {stats.tokens_per_step:.2f} tokens per main-model step, "
            f"{speedup:.2f}x the wall time of plain greedy decoding ({new} tokens, identical output).",
        ]
    )
    return DemoSection(
        title="DeepSeek-V3: auxiliary-loss-free load balancing", markdown=markdown, figures=figures
    )
