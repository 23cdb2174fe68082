"""The GRPO trainer: rollouts through the local engine, rule-based rewards, group advantages, clipped updates.

One optimizer step, read top to bottom in :meth:`GRPOTrainer.step`:

1. **Prompts.** ``prompts_per_step`` rows of the data set (a seeded permutation per epoch, so a resumed run
   sees the same rows); under torchrun rank ``r`` takes groups ``r, r + W, ...``.
2. **Rollouts.** Each prompt's group of ``num_generations`` completions is sampled by the LLM layer
   (``LocalLLM.agenerate`` with ``SamplingParams(n=G, logprobs=True)``: one request per group, issued
   concurrently; identical prompts are prefilled once by the engine). The sampling seed of a group
   depends on (seed, step, group index) only, so one process and N processes draw the same completions.
3. **Rewards.** Every reward function ``(prompts, completions, **columns)`` scores every completion; the
   reward is their weighted sum (TRL's convention); advantages are group-normalised (:mod:`grpo`).
   With ``dynamic_sampling`` (DAPO), groups whose rewards are all equal are dropped and more prompts are
   sampled to refill, up to ``max_resample_rounds`` rounds.
4. **Old and reference log-probs.** With ``num_iterations == 1`` the policy has not moved since sampling,
   so ``old_logps`` is the training forward's own value, detached (ratio 1, no second forward; it equals
   the engine's sampled log-probs at temperature 1 within float tolerance, see tests/rl/test_logprobs.py);
   otherwise one no-grad forward before the first update. The reference model (``beta > 0``) is a frozen
   copy of the initial policy unless one is given.
5. **Update.** ``gradient_accumulation_steps`` micro-batches per optimizer step; each micro-batch's loss is
   scaled so that the accumulated gradient equals the whole batch's (exact for ``grpo``, ``dapo`` and
   ``dr_grpo``; ``bnpo`` averages micro-batch token means, as TRL does). Under torchrun the gradients are
   summed over ranks with ``all_reduce`` (each rank's loss already carries the global normalizer), which is
   DDP's averaging without its forward hooks (the chunked log-prob forward calls the decoder and the LM
   head separately). Then gradient clipping, ``optimizer.step()`` inside ``llm.updating_weights()`` (or
   ``llm.engine.refresh_weights()`` afterwards where the LLM layer lacks that contract), repeated
   ``num_iterations`` times on the same rollouts.
6. **Log and checkpoint.** Metrics to ``metrics.jsonl`` (reward mean/std, each reward function apart,
   accuracy, completion length, entropy, clip fractions, KL, zero-std group share, step seconds); resumable
   checkpoints through :mod:`testtime.train.checkpoint`; the final policy as a ``save_pretrained`` folder
   ``<out>/policy``.

Shape legend: B completions on this rank (groups x G), T longest completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from testtime.llm.protocol import SamplingParams
from testtime.rl.grpo import (
    KL_ESTIMATORS,
    LOSS_TYPES,
    group_advantages,
    policy_loss_and_stats,
)
from testtime.rl.logprobs import completion_logprobs

__all__ = ["GRPOConfig", "GRPOTrainer", "Rollout", "refresh_llm_weights", "updating_weights"]


def _finite(value: float) -> float:
    """``value``, or NaN for infinities (every comparison with NaN is false, so checks reject both)."""
    return value if math.isfinite(value) else math.nan


@dataclass(kw_only=True)
class GRPOConfig:
    """GRPO hyperparameters (names follow TRL's GRPOConfig; paper values in the comments).

    R1-Zero (arXiv 2501.12948, supplementary): 16 outputs per question, 32 questions per step, temperature
    1, lr 3e-6, KL coefficient 0.001. The defaults here are sized for a 135M model on a CPU.
    """

    num_generations: int = 8  # G, completions per prompt (R1: 16)
    prompts_per_step: int = 4  # questions per optimizer step, over all ranks (R1: 32)
    max_completion_length: int = 128  # tokens per completion
    temperature: float = 1.0  # sampling temperature (R1: 1.0); log-probs are taken at the same temperature
    top_p: float = 1.0  # nucleus sampling (the ratio assumes the full distribution: keep 1)
    loss_type: str = "grpo"  # grpo (DeepSeekMath/R1) | bnpo | dapo | dr_grpo
    beta: float = 0.0  # KL coefficient (R1: 0.001; TRL default 0: no reference model needed)
    kl_estimator: str = "k3"  # k1 | k2 | k3 (R1 eq. 2)
    epsilon: float = 0.2  # lower clip range (DeepSeekMath 0.2)
    epsilon_high: float | None = None  # upper clip range (None: epsilon; DAPO 0.28)
    importance_sampling_level: str = "token"  # token | sequence (GSPO)
    scale_rewards: str = "group"  # group | batch | none (Dr. GRPO: none)
    leave_one_out: bool = False  # RLOO baseline instead of the group mean
    num_iterations: int = 1  # mu: optimizer steps per batch of rollouts
    mask_truncated_completions: bool = False  # DAPO: truncated completions do not enter the loss
    dynamic_sampling: bool = False  # DAPO: drop zero-std groups and refill
    max_resample_rounds: int = 3  # refill rounds of dynamic sampling
    reward_weights: list[float] | None = None  # per reward function (None: all 1)
    learning_rate: float = 1e-6  # (R1: 3e-6)
    optimizer: str = "adamw"  # adamw | sgd (sgd: tests compare gradients through the weights)
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: float = 1.0  # 0 disables clipping
    warmup_steps: int = 0  # linear warmup, then constant (R1: constant)
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step (per rank)
    max_steps: int = 100  # optimizer steps (num_iterations per rollout batch)
    chunk_size: int = 1024  # completion positions per LM-head chunk (see logprobs.py)
    seed: int = 0
    save_every: int = 0  # checkpoint every N rollout batches (0: only at the end)
    keep_checkpoints: int = 2
    save_policy: bool = True  # write <out>/policy with save_pretrained at the end
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        checks = [
            (self.num_generations >= 2, f"num_generations must be >= 2, got {self.num_generations}"),
            (self.prompts_per_step >= 1, f"prompts_per_step must be >= 1, got {self.prompts_per_step}"),
            (self.max_completion_length >= 1, "max_completion_length must be >= 1"),
            (
                _finite(self.temperature) > 0,
                f"temperature must be > 0 for GRPO sampling, got {self.temperature}",
            ),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.loss_type in LOSS_TYPES, f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}"),
            (_finite(self.beta) >= 0, f"beta must be >= 0, got {self.beta}"),
            (self.kl_estimator in KL_ESTIMATORS, f"kl_estimator must be one of {KL_ESTIMATORS}"),
            (_finite(self.epsilon) >= 0, f"epsilon must be >= 0, got {self.epsilon}"),
            (self.epsilon_high is None or _finite(self.epsilon_high) >= 0, "epsilon_high must be >= 0"),
            (
                self.importance_sampling_level in ("token", "sequence"),
                "importance_sampling_level: token|sequence",
            ),
            (self.scale_rewards in ("group", "batch", "none"), "scale_rewards must be group, batch or none"),
            (self.num_iterations >= 1, "num_iterations must be >= 1"),
            (self.optimizer in ("adamw", "sgd"), f"optimizer must be adamw or sgd, got {self.optimizer!r}"),
            (
                _finite(self.learning_rate) > 0,
                f"learning_rate must be a finite number > 0, got {self.learning_rate}",
            ),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (self.max_steps >= 0, "max_steps must be >= 0"),
            (self.chunk_size >= 1, "chunk_size must be >= 1"),
            (_finite(self.max_grad_norm) >= 0, "max_grad_norm must be >= 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.save_every >= 0, "save_every must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(kw_only=True)
class Rollout:
    """One sampled completion with what the loss and the logs need."""

    group: int  # global group index within the step
    prompt: Any
    prompt_ids: list[int]
    completion: str
    completion_ids: list[int]
    sampled_logps: list[float] | None
    truncated: bool
    columns: dict[str, Any]
    rewards: list[float] = field(default_factory=list)
    reward: float = 0.0


def updating_weights(llm: Any) -> contextlib.AbstractContextManager[Any]:
    """``llm.updating_weights()`` where the LLM layer has the weight-update contract, else a context that
    refreshes the engine's weights on exit."""
    if llm is not None and hasattr(llm, "updating_weights"):
        return llm.updating_weights()

    @contextlib.contextmanager
    def fallback() -> Iterator[None]:
        yield
        refresh_llm_weights(llm)

    return fallback()


def refresh_llm_weights(llm: Any) -> None:
    """Declare an in-place weight change already made (``weights_changed`` or the engine's refresh)."""
    if llm is None:
        return
    if hasattr(llm, "weights_changed"):
        llm.weights_changed()
    elif hasattr(getattr(llm, "engine", None), "refresh_weights"):
        llm.engine.refresh_weights()


class _TokenizerFile:
    """Adapter giving a transformers tokenizer the ``save(path)`` the checkpoint writer calls."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def save(self, path: Path) -> None:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.save(str(path))
        else:
            Path(path).write_text("{}")


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(values: list[float]) -> list[float]:
    """Sum a few floats over ranks (float64)."""
    if _world()[1] == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


class GRPOTrainer:
    """GRPO on a transformers causal LM with rewards from plain callables.

    Args:
        model: the policy (a transformers causal LM; trained in place).
        tokenizer: its tokenizer.
        reward_funcs: reward callables ``(prompts, completions, **columns) -> list[float]``.
        dataset: rows ``{"prompt": str | messages, **columns}``.
        config: hyperparameters.
        out_dir: the run folder (metrics.jsonl, checkpoints/, policy/).
        llm: the LLM backend that samples rollouts (default: a ``LocalLLM`` on ``model``, sharing its
            weights; any backend with ``agenerate``/``encode`` whose model is the policy works).
        ref_model: the frozen reference for the KL term (default: a copy of the initial policy when
            ``beta > 0``).
        on_step: called with ``(step, metrics)`` after every optimizer step (tests stop runs with it).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        reward_funcs: Sequence[Callable[..., list[float]]],
        dataset: Sequence[dict[str, Any]],
        config: GRPOConfig | None = None,
        *,
        out_dir: str | Path = "runs/r1",
        llm: Any = None,
        ref_model: nn.Module | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.config = config or GRPOConfig()
        cfg = self.config
        if not reward_funcs:
            raise ValueError("GRPO needs at least one reward function")
        if cfg.reward_weights is not None and len(cfg.reward_weights) != len(reward_funcs):
            raise ValueError(
                f"{len(cfg.reward_weights)} reward weights for {len(reward_funcs)} reward functions"
            )
        if not dataset:
            raise ValueError("the data set is empty")
        for row in dataset[:1]:
            if "prompt" not in row:
                raise ValueError("every data set row needs a 'prompt'")
        self.rank, self.world = _world()
        if cfg.prompts_per_step % self.world:
            raise ValueError(
                f"prompts_per_step {cfg.prompts_per_step} must divide among {self.world} processes"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.reward_funcs = list(reward_funcs)
        self.reward_names = [getattr(f, "__name__", f"reward_{i}") for i, f in enumerate(reward_funcs)]
        self.reward_weights = cfg.reward_weights or [1.0] * len(reward_funcs)
        self.dataset = list(dataset)
        self.out_dir = Path(out_dir)
        self.on_step = on_step
        if llm is None:
            from testtime.llm.local import LocalLLM

            llm = LocalLLM(model, tokenizer, max_batch_size=max(32, cfg.num_generations))
        self.llm = llm
        self.ref_model = ref_model
        if cfg.beta > 0 and self.ref_model is None:
            self.ref_model = copy.deepcopy(model).eval()
        if self.ref_model is not None:
            self.ref_model.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        if cfg.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay
            )
        else:
            # The fused kernel (CPU and CUDA) is ~8x faster than torch's per-tensor default on CPU: 0.15 s vs
            # 1.27 s per step for SmolLM2-135M at 1 thread, a tenth of a GRPO step (docs/benchmarks/grpo_step.md).
            fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
            self.optimizer = torch.optim.AdamW(
                params,
                lr=cfg.learning_rate,
                betas=cfg.adam_betas,
                weight_decay=cfg.weight_decay,
                fused=fused or None,
            )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        )
        self.step_count = 0  # optimizer steps taken
        self.batches = 0  # rollout batches taken
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ data

    def _rows_for_batch(self, batch: int) -> list[tuple[int, dict[str, Any]]]:
        """The (global group index, row) pairs of this rank for rollout batch ``batch``."""
        cfg = self.config
        per_epoch = len(self.dataset)
        out = []
        for group in range(cfg.prompts_per_step):
            position = batch * cfg.prompts_per_step + group
            epoch, offset = divmod(position, per_epoch)
            order = list(range(per_epoch))
            random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
            if group % self.world == self.rank:
                out.append((group, self.dataset[order[offset]]))
        return out

    def _refill_rows(self, batch: int, round_: int, count: int) -> list[tuple[int, dict[str, Any]]]:
        """Extra rows for dynamic sampling (rank-specific stream; group ids past the batch's)."""
        rng = random.Random(hash((self.config.seed, batch, round_, self.rank)) & 0xFFFFFFFF)
        base = self.config.prompts_per_step * (round_ + 1) + self.rank * count
        return [(base + i, self.dataset[rng.randrange(len(self.dataset))]) for i in range(count)]

    # ------------------------------------------------------------------ rollouts

    def _group_seed(self, batch: int, group: int) -> int:
        return (self.config.seed * 1_000_003 + batch * 10_007 + group) % (2**31 - 1)

    def rollout(self, batch: int, rows: list[tuple[int, dict[str, Any]]]) -> list[Rollout]:
        """Sample a group of completions for every row (concurrent requests) and score them."""
        cfg = self.config
        if not rows:
            return []
        self.model.eval()

        async def sample_all() -> list[Any]:
            return await asyncio.gather(
                *(
                    self.llm.agenerate(
                        [row["prompt"]],
                        SamplingParams(
                            n=cfg.num_generations,
                            temperature=cfg.temperature,
                            top_p=cfg.top_p,
                            max_tokens=cfg.max_completion_length,
                            seed=self._group_seed(batch, group),
                            logprobs=True,
                        ),
                    )
                    for group, row in rows
                )
            )

        outputs = asyncio.run(sample_all())
        rollouts: list[Rollout] = []
        for (group, row), out in zip(rows, outputs, strict=True):
            prompt_ids = self.llm.encode(row["prompt"])
            columns = {k: v for k, v in row.items() if k != "prompt"}
            for choice in out[0]:
                if choice.token_ids is None:
                    raise ValueError("the LLM backend must return token ids for GRPO")
                rollouts.append(
                    Rollout(
                        group=group,
                        prompt=row["prompt"],
                        prompt_ids=list(prompt_ids),
                        completion=choice.text,
                        completion_ids=list(choice.token_ids),
                        sampled_logps=choice.logprobs,
                        truncated=choice.finish_reason == "length",
                        columns=columns,
                    )
                )
        self._score(rollouts)
        return rollouts

    def _score(self, rollouts: list[Rollout]) -> None:
        prompts = [r.prompt for r in rollouts]
        conversational = [not isinstance(p, str) for p in prompts]
        completions = [
            [{"role": "assistant", "content": r.completion}] if chat else r.completion
            for r, chat in zip(rollouts, conversational, strict=True)
        ]
        keys = sorted({k for r in rollouts for k in r.columns})
        columns = {k: [r.columns.get(k) for r in rollouts] for k in keys}
        columns["completion_ids"] = [r.completion_ids for r in rollouts]
        per_func = []
        for func in self.reward_funcs:
            values = func(prompts, completions, **columns)
            if len(values) != len(rollouts):
                raise ValueError(f"reward {getattr(func, '__name__', func)} returned {len(values)} values")
            per_func.append([0.0 if v is None else float(v) for v in values])
        for i, r in enumerate(rollouts):
            r.rewards = [values[i] for values in per_func]
            r.reward = sum(w * v for w, v in zip(self.reward_weights, r.rewards, strict=True))

    def _collect(self, batch: int) -> tuple[list[Rollout], dict[str, float]]:
        """This rank's rollouts for a batch, with dynamic sampling's refills."""
        cfg = self.config
        G = cfg.num_generations
        rows = self._rows_for_batch(batch)
        rollouts = self.rollout(batch, rows)
        all_groups = len(rows)
        zero_std = sum(self._zero_std(rollouts, g) for g in {r.group for r in rollouts})
        stats = {"zero_std_groups": float(zero_std), "groups": float(all_groups)}
        if not cfg.dynamic_sampling:
            return rollouts, stats
        wanted = len(rows)
        kept = [r for r in rollouts if not self._zero_std(rollouts, r.group)]
        for round_ in range(cfg.max_resample_rounds):
            missing = wanted - len(kept) // G
            if missing <= 0:
                break
            extra = self.rollout(batch, self._refill_rows(batch, round_, missing))
            stats["groups"] += missing
            stats["zero_std_groups"] += sum(self._zero_std(extra, g) for g in {r.group for r in extra})
            kept += [r for r in extra if not self._zero_std(extra, r.group)]
        return kept[: wanted * G], stats

    @staticmethod
    def _zero_std(rollouts: list[Rollout], group: int) -> bool:
        values = [r.reward for r in rollouts if r.group == group]
        return all(v == values[0] for v in values)

    # ------------------------------------------------------------------ update

    def _logps(self, model: nn.Module, rows: list[Rollout], *, entropy: bool) -> Any:
        return completion_logprobs(
            model,
            [r.prompt_ids for r in rows],
            [r.completion_ids for r in rows],
            temperature=self.config.temperature,
            chunk_size=self.config.chunk_size,
            return_entropy=entropy,
        )

    def _micro_batches(self, count: int) -> list[slice]:
        parts = min(self.config.gradient_accumulation_steps, max(count, 1))
        bounds = [round(i * count / parts) for i in range(parts + 1)]
        return [slice(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i + 1] > bounds[i]]

    def _update(
        self, rollouts: list[Rollout], advantages: torch.Tensor, old: list[Any] | None
    ) -> dict[str, float]:
        """One optimizer step over this rank's rollouts (micro-batched, gradients summed over ranks)."""
        cfg = self.config
        model = self.model
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        micro = self._micro_batches(len(rollouts))
        masks = [self._mask(rollouts[s]) for s in micro]
        local_tokens = float(sum(m.sum() for m in masks))
        global_rows, global_tokens = _all_sum([float(len(rollouts)), local_tokens])
        totals = dict.fromkeys(("loss", "clip_low", "clip_high", "kl", "entropy", "tokens"), 0.0)
        for index, (part, mask) in enumerate(zip(micro, masks, strict=True)):
            rows = rollouts[part]
            logps, _, entropy = self._logps(model, rows, entropy=True)
            old_logps = logps.detach() if old is None else old[index]
            ref_logps = None
            if self.ref_model is not None:
                with torch.no_grad():
                    ref_logps = self._logps(self.ref_model, rows, entropy=False)[0]
            loss, stats = policy_loss_and_stats(
                logps,
                old_logps,
                advantages[part].to(logps.dtype),
                mask,
                loss_type=cfg.loss_type,  # type: ignore[arg-type]
                epsilon=cfg.epsilon,
                epsilon_high=cfg.epsilon_high,
                ref_logps=ref_logps,
                beta=cfg.beta,
                max_completion_length=cfg.max_completion_length,
                importance_sampling_level=cfg.importance_sampling_level,  # type: ignore[arg-type]
                kl_estimator=cfg.kl_estimator,  # type: ignore[arg-type]
                num_items=global_tokens,
            )
            rows_here = part.stop - part.start
            if cfg.loss_type in ("grpo", "dr_grpo"):
                loss = loss * rows_here / global_rows
            elif cfg.loss_type == "bnpo":
                loss = loss / (len(micro) * self.world)
            loss.backward()
            totals["loss"] += float(loss.detach())
            tokens = float(mask.sum())
            totals["tokens"] += tokens
            totals["clip_low"] += stats.clip_low * tokens
            totals["clip_high"] += stats.clip_high * tokens
            totals["kl"] += stats.kl * tokens
            totals["entropy"] += float((entropy * mask).sum())
        if self.world > 1:
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
        grad_norm = 0.0
        if cfg.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
        with updating_weights(self.llm):
            self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        summed = _all_sum([totals[k] for k in ("loss", "clip_low", "clip_high", "kl", "entropy", "tokens")])
        loss_sum, clip_low, clip_high, kl, entropy_sum, tokens = summed
        tokens = max(tokens, 1.0)
        return {
            "loss": loss_sum,
            "clip_ratio/low": clip_low / tokens,
            "clip_ratio/high": clip_high / tokens,
            "kl": kl / tokens,
            "entropy": entropy_sum / tokens,
            "grad_norm": grad_norm,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def _mask(self, rows: list[Rollout]) -> torch.Tensor:
        longest = max(1, max(len(r.completion_ids) for r in rows))
        mask = torch.zeros(len(rows), longest)
        for i, r in enumerate(rows):
            if not (self.config.mask_truncated_completions and r.truncated):
                mask[i, : len(r.completion_ids)] = 1.0
        return mask.to(next(self.model.parameters()).device)

    # ------------------------------------------------------------------ one step

    def step(self) -> dict[str, float]:
        """Sample one batch of rollouts and take ``num_iterations`` optimizer steps on it."""
        cfg = self.config
        start = time.perf_counter()
        rollouts, group_stats = self._collect(self.batches)
        sample_seconds = time.perf_counter() - start
        rewards = torch.tensor([r.reward for r in rollouts], dtype=torch.float32)
        if cfg.scale_rewards == "batch" and self.world > 1:
            # the batch std spans all ranks
            count, total, squares = _all_sum(
                [float(len(rollouts)), float(rewards.sum()), float((rewards.double() ** 2).sum())]
            )
            mean = total / count
            std = math.sqrt(max(squares - count * mean * mean, 0.0) / max(count - 1, 1))
            grouped = rewards.view(-1, cfg.num_generations)
            advantages = ((grouped - grouped.mean(1, keepdim=True)) / (std + 1e-4)).reshape(-1)
        elif rollouts:
            advantages = group_advantages(
                rewards,
                cfg.num_generations,
                scale_rewards=cfg.scale_rewards,  # type: ignore[arg-type]
                leave_one_out=cfg.leave_one_out,
            )
        else:
            advantages = rewards
        old: list[Any] | None = None
        if cfg.num_iterations > 1 and rollouts:
            self.model.eval()
            with torch.no_grad():
                old = [
                    self._logps(self.model, rollouts[s], entropy=False)[0]
                    for s in self._micro_batches(len(rollouts))
                ]
        update: dict[str, float] = {}
        for _ in range(cfg.num_iterations):
            if self.step_count >= cfg.max_steps:
                break
            update = self._update(rollouts, advantages, old)
        self.batches += 1
        metrics = self._metrics(rollouts, group_stats)
        metrics.update(update)
        metrics["sample_seconds"] = sample_seconds
        metrics["step_seconds"] = time.perf_counter() - start
        metrics["step"] = float(self.step_count)
        return metrics

    def _metrics(self, rollouts: list[Rollout], group_stats: dict[str, float]) -> dict[str, float]:
        n = float(len(rollouts))
        sums = [
            n,
            sum(r.reward for r in rollouts),
            sum(r.reward**2 for r in rollouts),
            sum(len(r.completion_ids) for r in rollouts),
            sum(r.truncated for r in rollouts),
            group_stats["zero_std_groups"],
            group_stats["groups"],
            *(sum(r.rewards[i] for r in rollouts) for i in range(len(self.reward_funcs))),
        ]
        sums = _all_sum([float(s) for s in sums])
        count = max(sums[0], 1.0)
        mean = sums[1] / count
        out = {
            "reward": mean,
            "reward_std": math.sqrt(max(sums[2] / count - mean * mean, 0.0)),
            "completion_length": sums[3] / count,
            "truncated_share": sums[4] / count,
            "zero_std_share": sums[5] / max(sums[6], 1.0),
        }
        for i, name in enumerate(self.reward_names):
            out[f"rewards/{name}"] = sums[7 + i] / count
        return out

    # ------------------------------------------------------------------ loop, checkpoints

    def _config_text(self) -> str:
        return json.dumps(asdict(self.config), indent=1, default=str)

    def save_checkpoint(self) -> None:
        """A resumable checkpoint under ``<out>/checkpoints`` (collective)."""
        from testtime.train.checkpoint import save_checkpoint

        save_checkpoint(
            self.out_dir / "checkpoints",
            step=self.step_count,
            model=self.model,
            optimizer=self.optimizer,
            trainer_state={
                "step": self.step_count,
                "batches": self.batches,
                "scheduler": self.scheduler.state_dict(),
                "history": self.history,
            },
            config_yaml=self._config_text(),
            tokenizer=_TokenizerFile(self.tokenizer),
            keep=self.config.keep_checkpoints,
        )

    def resume(self) -> bool:
        """Load the newest checkpoint of ``<out>/checkpoints`` if there is one; True when resumed."""
        from testtime.train.checkpoint import latest_checkpoint, load_checkpoint

        path = latest_checkpoint(self.out_dir / "checkpoints")
        if path is None:
            return False
        state = load_checkpoint(path, model=self.model, optimizer=self.optimizer)
        self.step_count = int(state["step"])
        self.batches = int(state["batches"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = list(state.get("history", []))
        refresh_llm_weights(self.llm)
        return True

    def save_policy(self, path: str | Path | None = None) -> Path:
        """The policy as a ``save_pretrained`` folder (rank 0 writes; default ``<out>/policy``)."""
        path = Path(path or self.out_dir / "policy")
        if self.rank == 0:
            path.mkdir(parents=True, exist_ok=True)
            self.model.save_pretrained(path, safe_serialization=True)
            self.tokenizer.save_pretrained(path)
        if self.world > 1:
            dist.barrier()
        return path

    def train(self, *, resume: bool = True) -> list[dict[str, float]]:
        """Run until ``max_steps`` optimizer steps; returns the metrics of every step (rank 0 logs them)."""
        from testtime.train.loggers import make_loggers

        cfg = self.config
        if resume:
            self.resume()
        is_main = self.rank == 0
        if is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(self._config_text())
        loggers = make_loggers(
            [], out_dir=self.out_dir, project="testtime-r1", run_name="grpo", config={}, enabled=is_main
        )
        bar = None
        if cfg.progress and is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step_count, desc="grpo", unit="step")
        try:
            while self.step_count < cfg.max_steps:
                metrics = self.step()
                self.history.append(metrics)
                loggers.log(metrics, self.step_count)
                if bar is not None:
                    bar.update(int(metrics["step"]) - bar.n)
                    bar.set_postfix(
                        reward=f"{metrics['reward']:.3f}", len=f"{metrics['completion_length']:.0f}"
                    )
                if cfg.save_every and self.batches % cfg.save_every == 0 and self.step_count < cfg.max_steps:
                    self.save_checkpoint()
                if self.on_step is not None:
                    self.on_step(self.step_count, metrics)
            self.save_checkpoint()
            if cfg.save_policy:
                self.save_policy()
        finally:
            if bar is not None:
                bar.close()
            loggers.close()
        return self.history
