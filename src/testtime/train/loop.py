"""The training loop, readable top to bottom: schedule -> forward/backward -> clip -> step -> log/eval/ckpt.

:func:`train` runs alone or under ``torchrun`` (DDP, or FSDP2 with ``parallel="fsdp"``). A step consumes
``batch_size`` sequences: every process runs ``grad_accum`` micro-batches of ``micro_batch_size``, the
gradients are averaged over all of them, so the same global batch gives the same update whatever the
number of processes. Training sequences come in the seeded order of :class:`testtime.train.data.SampleOrder`,
starting at the run's data position (sequences consumed so far), so a resumed run sees exactly the data an
uninterrupted run would.

Evaluation reports bits per byte on held-out documents: the summed next-token cross-entropy (nats) of the
evaluated targets divided by ``ln 2`` times the UTF-8 bytes those targets stand for. Targets that are
special tokens (the ``<|endoftext|>`` separators) stand for no text and are left out of both sums, so the
number is comparable across tokenizers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from testtime.errors import UserError
from testtime.train import distributed
from testtime.train.checkpoint import CheckpointFiles, latest_checkpoint, load_checkpoint, save_checkpoint
from testtime.train.config import TrainConfig, family_command, validate
from testtime.train.data import (
    PackedSequences,
    SampleOrder,
    load_documents,
    split_documents,
    tokenize_documents,
)
from testtime.train.loggers import make_loggers
from testtime.train.registry import build_model, get_model_spec, output_field, resolve_model_config
from testtime.train.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer, train_bpe

__all__ = ["TrainResult", "bits_per_byte", "evaluate", "lr_at", "seed_everything", "train"]

SPLIT_SEED = 0  # the held-out documents do not depend on the run's seed, so runs stay comparable


@dataclass
class TrainResult:
    """What a run did.

    Attributes:
        out_dir: the run folder.
        step: optimizer steps done (including those before a resume).
        losses: training loss at each logged step.
        evals: validation bits per byte at each evaluation step.
        checkpoint: the last checkpoint written (None on non-main processes or if none).
        num_params: trainable parameters of the model.
    """

    out_dir: Path
    step: int
    losses: dict[int, float] = field(default_factory=dict)
    evals: dict[int, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    num_params: int = 0


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA): the one place randomness is seeded."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(step: int, *, lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine decay.

    Warmup rises linearly to ``lr`` at step ``warmup_steps - 1``; the cosine then falls from ``lr`` at step
    ``warmup_steps`` to ``min_lr_ratio * lr`` at step ``max_steps``.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    min_lr = min_lr_ratio * lr
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def bits_per_byte(nats: torch.Tensor, num_bytes: torch.Tensor) -> float:
    """``sum(nats) / (ln 2 * sum(bytes))``."""
    return float(nats.sum() / (math.log(2) * num_bytes.sum().clamp_min(1)))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: PackedSequences,
    token_bytes: torch.Tensor,
    *,
    num_sequences: int,
    micro_batch_size: int,
    info: distributed.DistInfo,
    autocast: Any = contextlib.nullcontext,
) -> float:
    """Bits per byte of the model on the first ``num_sequences`` sequences of ``data`` (split over processes).

    Args:
        model: the (wrapped) model; it returns ``logits``.
        data: validation sequences.
        token_bytes: ``(vocab,)`` bytes per token id (0 for special tokens).
        num_sequences: how many sequences to evaluate (rounded down to a multiple of the process count).
        micro_batch_size: sequences per forward pass.
        info: process placement.
        autocast: a context-manager factory for mixed precision.

    Returns:
        Bits per byte (the same on every process).
    """
    total = min(num_sequences, len(data)) // info.world_size * info.world_size
    if total == 0:
        raise UserError("the validation split is too small for one sequence per process; lower seq_len")
    mine = torch.arange(info.rank, total, info.world_size)
    was_training = model.training
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=info.device)  # nats, bytes
    token_bytes = token_bytes.to(info.device)
    for chunk in mine.split(micro_batch_size):
        x, y = (t.to(info.device) for t in data.batch(chunk))
        with autocast():
            logits = output_field(model(x), "logits")
        if logits is None:
            raise TypeError("evaluation needs the model output to carry `logits`")
        nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        nbytes = token_bytes[y.flatten()]
        sums[0] += (nats.double() * (nbytes > 0)).sum()
        sums[1] += nbytes.sum()
    model.train(was_training)
    sums = distributed.all_reduce_sum(sums)
    return bits_per_byte(sums[0], sums[1])


@dataclass
class _Data:
    tokenizer: Tokenizer
    train: PackedSequences
    val: PackedSequences | None
    fingerprint: str


def _prepare_data(cfg: TrainConfig, info: distributed.DistInfo, out_dir: Path, ckpt: Path | None) -> _Data:
    """Documents -> split -> tokenizer (loaded, or trained on the training split) -> packed sequences."""
    docs = load_documents(cfg.corpus, max_bytes=cfg.max_corpus_bytes)
    train_docs, val_docs = split_documents(docs, val_fraction=cfg.val_fraction, seed=SPLIT_SEED)
    tokenizer: Tokenizer
    if ckpt is not None:
        tokenizer = load_tokenizer(ckpt / CheckpointFiles.tokenizer)
    elif cfg.tokenizer == "byte":
        tokenizer = ByteTokenizer()
    elif cfg.tokenizer == "bpe":
        path = out_dir / "tokenizer.json"
        if info.is_main:
            train_bpe([d.text for d in train_docs], vocab_size=cfg.bpe_vocab_size).save(path)
        if dist.is_initialized():
            dist.barrier()
        tokenizer = load_tokenizer(path)
    else:
        tokenizer = load_tokenizer(cfg.tokenizer)
    train_tokens = tokenize_documents(tokenizer, train_docs)
    digest = hashlib.blake2b(train_tokens.numpy().tobytes(), digest_size=8).hexdigest()
    train = PackedSequences(train_tokens, cfg.seq_len)
    if len(train) == 0:
        raise UserError(
            f"the training split has {len(train_tokens)} tokens, fewer than seq_len {cfg.seq_len}"
        )
    val = PackedSequences(tokenize_documents(tokenizer, val_docs), cfg.seq_len) if val_docs else None
    if val is not None and len(val) < info.world_size:
        raise UserError(
            f"the validation split is shorter than {info.world_size} sequence(s) of {cfg.seq_len}"
        )
    return _Data(tokenizer, train, val, f"{len(train_tokens)}:{digest}")


def _grad_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """Skip the gradient all-reduce on all but the last micro-batch of a step (DDP and FSDP2)."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if hasattr(model, "no_sync") and not sync:  # DDP
        return model.no_sync()
    return contextlib.nullcontext()


def _config_yaml(cfg: TrainConfig, model_config: Any) -> str:
    import yaml

    data = dataclasses.asdict(cfg)
    data["model_config"] = dataclasses.asdict(model_config)
    data = json.loads(json.dumps(data, default=str))  # tuples -> lists, anything exotic -> its str
    return yaml.safe_dump(data, sort_keys=False)


def _find_checkpoint(cfg: TrainConfig, ckpt_root: Path) -> Path | None:
    if cfg.resume == "auto":
        return latest_checkpoint(ckpt_root)
    if cfg.resume == "never":
        if latest_checkpoint(ckpt_root) is not None:
            raise UserError(
                f"{ckpt_root.parent} already has checkpoints: resume with --resume auto or use --out"
            )
        return None
    path = Path(cfg.resume)
    if (path / "latest").is_file():  # a checkpoints folder
        path = latest_checkpoint(path) or path
    if not (path / CheckpointFiles.trainer).is_file():
        raise UserError(f"{cfg.resume} is not a checkpoint folder (no {CheckpointFiles.trainer})")
    return path


def check_resume_compatible(cfg: TrainConfig, ckpt: Path) -> None:
    """Refuse to resume ``ckpt`` with another model family or architecture, before anything is written.

    Compares the model name and the resolved model fields of the checkpoint's ``config.yaml`` with what
    ``cfg`` asks for; a mismatch is one line that names the folder, the two models and the way out.
    """
    import yaml

    from testtime.train.registry import get_model_spec

    try:
        saved = yaml.safe_load((ckpt / CheckpointFiles.config).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read the configuration of checkpoint {ckpt}: {exc}") from exc
    folder = Path(cfg.out_dir)
    suggestion = f"runs/{family_command(cfg.model)}"
    if Path(suggestion).resolve() == folder.resolve():
        suggestion = f"{folder}-2"
    way_out = (
        f"train into another folder with --out (e.g. --out {suggestion}); nothing in {folder} was changed"
    )
    if saved.get("model") != cfg.model:
        raise UserError(
            f"{folder} holds a {saved.get('model')!r} run (checkpoint {ckpt.name}); this run trains "
            f"{cfg.model!r}: {way_out}"
        )
    spec = get_model_spec(cfg.model)
    wanted = dataclasses.asdict(resolve_model_config(spec, cfg.preset, cfg.model_config))
    wanted = json.loads(json.dumps(wanted, default=str))
    have = saved.get("model_config") or {}
    differ = sorted(k for k in set(wanted) | set(have) if wanted.get(k) != have.get(k))
    if differ:
        details = ", ".join(f"{k}: {have.get(k)!r} there, {wanted.get(k)!r} asked" for k in differ[:4])
        raise UserError(
            f"{folder} holds a {cfg.model} of another shape (checkpoint {ckpt.name}; {details}); resume with "
            f"the same --preset/--set model_config, or {way_out}"
        )


class _InterruptFlag:
    """While active, Ctrl-C (SIGINT) asks the loop to stop after the current step instead of killing it.

    A second Ctrl-C interrupts at once. Only installed in the main thread of a single process (under
    torchrun every rank would have to agree on the step, so the default behaviour stays).
    """

    def __init__(self, *, enabled: bool) -> None:
        import threading

        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this step (press again to stop at once)", flush=True)

    def __enter__(self) -> _InterruptFlag:
        if self.enabled:
            import signal

            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            import signal

            signal.signal(signal.SIGINT, self._previous)


def _interrupt_message(cfg: TrainConfig, step: int, kept: Path | None) -> str:
    where = f"checkpoint {kept} is kept" if kept is not None else "no checkpoint was written"
    resume = f"testtime {family_command(cfg.model)} train --out {cfg.out_dir} --model {cfg.model}"
    if cfg.preset:
        resume += f" --preset {cfg.preset}"
    return f"interrupted at step {step}; {where}. Resume with: {resume} (plus your other options)"


def _micro_batches(cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    micro = cfg.micro_batch_size or cfg.batch_size // world_size
    return micro, cfg.batch_size // (micro * world_size)


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.corpus`` as configured; resume from the latest checkpoint if asked.

    Args:
        cfg: the run's configuration (validated here before anything else happens).

    Returns:
        What the run did (see :class:`TrainResult`).
    """
    validate(cfg, world_size=distributed.world_size_from_env())
    owns_group = not dist.is_initialized()
    info = distributed.setup(cfg.device)
    try:
        return _train(cfg, info)
    finally:
        if owns_group:
            distributed.teardown()


def _train(cfg: TrainConfig, info: distributed.DistInfo) -> TrainResult:
    # ---- setup: run folder, seed, data, model, optimizer, resume ----
    micro_bs, grad_accum = _micro_batches(cfg, info.world_size)
    out_dir = Path(cfg.out_dir)
    ckpt_root = out_dir / "checkpoints"
    ckpt = _find_checkpoint(cfg, ckpt_root)
    if ckpt is not None:  # checked before anything in the folder is written
        check_resume_compatible(cfg, ckpt)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if dist.is_initialized():
        dist.barrier()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)

    data = _prepare_data(cfg, info, out_dir, ckpt)
    spec = get_model_spec(cfg.model)
    model_config = resolve_model_config(spec, cfg.preset, cfg.model_config)
    config_yaml = _config_yaml(cfg, model_config)
    if info.is_main:
        (out_dir / "config.yaml").write_text(config_yaml)
    raw_model = build_model(spec, model_config, vocab_size=data.tokenizer.vocab_size).to(info.device)
    num_params = sum(p.numel() for p in {id(p): p for p in raw_model.parameters()}.values())
    if cfg.compile:
        raw_model.compile()
    model = distributed.wrap_model(raw_model, info, parallel=cfg.parallel)
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
    )
    step, position = 0, 0  # optimizer steps done, training sequences consumed
    if ckpt is not None:
        state = load_checkpoint(ckpt, model=model, optimizer=optimizer)
        step, position = state["step"], state["position"]
        if state.get("data_fingerprint") != data.fingerprint and info.is_main:
            print(
                f"warning: the training data differ from those of {ckpt}; continuing at position {position}"
            )
    order = SampleOrder(len(data.train), seed=cfg.seed)
    token_bytes = data.tokenizer.token_bytes()
    autocast = lambda: torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
    run_name = cfg.run_name or out_dir.name
    loggers = make_loggers(
        cfg.loggers,
        out_dir=out_dir,
        project=cfg.project,
        run_name=run_name,
        config=dataclasses.asdict(cfg),
        enabled=info.is_main,
    )
    result = TrainResult(out_dir=out_dir, step=step, num_params=num_params)
    hook = getattr(raw_model, "after_optimizer_step", None)

    def save() -> None:
        trainer_state = {"step": step, "position": position, "lr": lr, "data_fingerprint": data.fingerprint}
        result.checkpoint = save_checkpoint(
            ckpt_root,
            step=step,
            model=model,
            optimizer=optimizer,
            trainer_state=trainer_state,
            config_yaml=config_yaml,
            tokenizer=data.tokenizer,
            keep=cfg.keep_checkpoints,
        )

    def emit(line: str) -> None:
        """A line that stays (above the progress bar, or alone without one); main process only."""
        if not info.is_main:
            return
        if cfg.progress:
            bar.write(line)
        else:
            print(line, flush=True)

    def run_eval() -> None:
        if data.val is None:
            return
        bpb = evaluate(
            model,
            data.val,
            token_bytes,
            num_sequences=cfg.eval_sequences,
            micro_batch_size=micro_bs,
            info=info,
            autocast=autocast,
        )
        result.evals[step] = bpb
        loggers.log({"val/bpb": bpb}, step)
        bar.set_postfix_str(f"loss {last_loss:.4f} val bpb {bpb:.4f}")
        emit(f"step {step}/{cfg.max_steps}: validation {bpb:.4f} bits per byte")

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (cfg.progress and info.is_main), desc=run_name)
    if info.is_main:
        bar.write(
            f"{cfg.model} ({num_params / 1e6:.2f}M parameters), {len(data.train)} training sequences of "
            f"{cfg.seq_len} tokens, {info.world_size} process(es) x {grad_accum} micro-batch(es) of {micro_bs}"
            + (f", resumed from {ckpt} at step {step}" if ckpt else "")
        )
    lr, last_loss, tokens_seen, t0 = cfg.lr, float("nan"), 0, time.perf_counter()
    model.train()
    stop = _InterruptFlag(enabled=info.is_main and info.world_size == 1)
    consistent = True  # model, optimizer, step and position describe the same moment
    try:
        with stop:
            while step < cfg.max_steps:
                consistent = False
                # ---- schedule ----
                lr = lr_at(
                    step,
                    lr=cfg.lr,
                    warmup_steps=cfg.warmup_steps,
                    max_steps=cfg.max_steps,
                    min_lr_ratio=cfg.min_lr_ratio,
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr
                # ---- forward / backward over the micro-batches of this process ----
                loss_sum = torch.zeros((), device=info.device)
                metric_sums: dict[str, torch.Tensor] = {}
                for micro in range(grad_accum):
                    start = position + (micro * info.world_size + info.rank) * micro_bs
                    x, y = (t.to(info.device) for t in data.train.batch(order.indices(start, micro_bs)))
                    with _grad_sync(model, micro == grad_accum - 1), autocast():
                        out = model(x, y)
                        loss = output_field(out, "loss")
                        if loss is None:
                            raise TypeError(f"model {cfg.model!r} returned no `loss` for labelled input")
                        (loss / grad_accum).backward()
                    loss_sum += loss.detach().float()
                    for name, value in (output_field(out, "metrics") or {}).items():
                        metric_sums[name] = (
                            metric_sums.get(name, 0.0)
                            + torch.as_tensor(value, device=info.device).detach().float()
                        )
                # ---- clip, step ----
                grad_norm = None
                if cfg.grad_clip > 0:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if callable(hook):
                    hook()
                step += 1
                position += cfg.batch_size
                tokens_seen += cfg.batch_size * cfg.seq_len
                consistent = True  # the step is whole: saving now loses nothing
                bar.update(1)
                # ---- log / eval / checkpoint ----
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    count = grad_accum * info.world_size
                    values = (
                        distributed.all_reduce_sum(torch.stack([loss_sum, *metric_sums.values()])) / count
                    )
                    last_loss = float(values[0])
                    result.losses[step] = last_loss
                    metrics = {"train/loss": last_loss, "train/lr": lr}
                    metrics |= {
                        f"train/{k}": float(v) for k, v in zip(metric_sums, values[1:].tolist(), strict=True)
                    }
                    if grad_norm is not None:
                        norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                        metrics["train/grad_norm"] = float(norm)
                    metrics["train/tokens_per_s"] = tokens_seen / (time.perf_counter() - t0)
                    loggers.log(metrics, step)
                    bar.set_postfix_str(f"loss {last_loss:.4f} lr {lr:.2e}")
                    if not cfg.progress:
                        emit(
                            f"step {step}/{cfg.max_steps}: loss {last_loss:.4f}, lr {lr:.2e}, "
                            f"{metrics['train/tokens_per_s']:.0f} tokens/s"
                        )
                if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps:
                    run_eval()
                if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == cfg.max_steps:
                    save()
                if stop.requested:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        bar.close()
        done = result.checkpoint is not None and result.checkpoint.name == f"step_{step:06d}"
        if consistent and step > 0 and not done and info.world_size == 1:
            save()  # the last step completed: its state is whole, keep it (one process: no collective)
        loggers.close()
        kept = result.checkpoint or ckpt
        if info.is_main:
            print(_interrupt_message(cfg, step, kept), flush=True)
        raise
    bar.close()
    loggers.close()
    if ckpt is not None and result.checkpoint is None:  # the resumed run had already reached max_steps
        result.checkpoint = ckpt if info.is_main else None
        if info.is_main:
            print(f"nothing to do: {ckpt} is at step {step} >= max_steps {cfg.max_steps}")
    result.step = step
    return result
