"""DeepSeekMoE (DeepSeek-V3 Section 2.1.2, eqs. 12-20): shared + fine-grained routed experts.

``h' = u + sum_i FFN^(s)_i(u) + sum_i g_i FFN^(r)_i(u)`` (eq. 12; the residual u is added by the block).
Affinities are sigmoids ``s_i = sigmoid(u^T e_i)`` (eq. 15); the K_r experts are chosen by ``s_i + b_i``
(eq. 16), the routing bias b_i entering the selection only; the gates are the chosen *unbiased* affinities
normalised to sum to one (eq. 13) and multiplied by the routed scaling factor (2.5 in the release; the paper
does not mention it). Node-limited routing (Section 2.1.2): experts form ``n_group`` groups (nodes), a group's
score is the sum of its K_r/M highest biased affinities (M = ``topk_group``; rounded up when K_r/M is not
whole), and only the M best groups may be chosen from. The released code and transformers always sum the
two highest, which is the paper's rule for V3's shape (K_r/M = 8/4) only; ``group_score_topk=2`` selects it
(and is what a ``config.json`` without our ``testtime`` section gets). No token is dropped.

Experts run in grouped batches: the (token, expert) assignments are sorted by expert once, and each expert
runs once on its contiguous slice of tokens (``torch._grouped_mm`` when available and there are at least as
many assignments as experts, else one matmul pair per hit expert); the gate scales each expert's hidden
activation, and each token's k outputs are gathered back and summed. Dispatch and combine are permutations,
so their backward passes are gathers too (no scatter-add).

Balance losses (returned, never applied by this module to anything but ``aux_loss``):

* complementary sequence-wise loss (eqs. 17-20): per sequence of T tokens,
  ``f_i = N_r / (K_r T) sum_t 1[s_i,t in TopK({s_j,t}, K_r)]`` (eq. 18: the K_r highest *unbiased*
  affinities of token t, before the bias and the group limit), ``P_i = 1/T sum_t s'_i,t`` with ``s'`` the
  affinities normalised over all experts (eqs. 19-20), ``L = alpha sum_i f_i P_i`` (eq. 17), averaged over
  the sequences. ``balance_loss_counts="routed"`` counts the experts actually routed to instead (after the
  bias and the group limit);
* the batch-wise baseline: the same over all tokens of the batch (Section 4.5.3 / Wang et al. 2024).

Shape legend: ``n`` tokens (batch * positions), ``D`` model width, ``E`` routed experts N_r, ``k`` experts
per token K_r, ``I`` expert width, ``g`` groups, ``m`` assignments (n * k).

Deviations: none in the math; the options above (``group_score_topk``, ``balance_loss_counts``) keep the
released code's choices reachable. The routing bias is a float32 buffer as in the release (``e_score_correction_bias``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from testtime.deepseek.config import DeepSeekV3Config
from testtime.deepseek.layers import MLP

__all__ = [
    "MoE",
    "Experts",
    "Router",
    "balance_loss",
    "counted_experts",
    "dense_experts_reference",
    "group_topk",
    "grouped_experts",
    "route",
]


def group_topk(top_k: int, topk_group: int) -> int:
    """The paper's number of affinities summed per group: K_r / M, rounded up when not whole (>= 1)."""
    return max(1, -(-top_k // topk_group))


def route(
    logits: torch.Tensor,
    bias: torch.Tensor,
    *,
    top_k: int,
    n_group: int,
    topk_group: int,
    scoring_func: str = "sigmoid",
    norm_topk_prob: bool = True,
    routed_scaling_factor: float = 1.0,
    group_score_topk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose experts and gates from router logits (eqs. 13-16 and node-limited routing).

    Args:
        logits: ``(n, E)`` router logits ``u^T e_i`` (float32).
        bias: ``(E,)`` routing bias b_i, used for the choice only.
        top_k: K_r.
        n_group: expert groups (1: no group limit).
        topk_group: groups a token may use.
        scoring_func: "sigmoid" (V3) or "softmax" (V2).
        norm_topk_prob: normalise the chosen affinities to sum to one.
        routed_scaling_factor: multiplies the gates.
        group_score_topk: how many of a group's highest biased affinities make its score; None is the
            paper's K_r / M (``ceil(top_k / topk_group)``), 2 the released code's fixed rule.

    Returns:
        ``gates (n, k)``, ``indices (n, k)`` and the affinities ``scores (n, E)`` (differentiable).
    """
    scores = logits.sigmoid() if scoring_func == "sigmoid" else logits.softmax(dim=-1)
    choice = scores.detach() + bias
    num_experts = scores.shape[-1]
    if n_group > 1:
        grouped = choice.view(-1, n_group, num_experts // n_group)
        per_group = group_topk(top_k, topk_group) if group_score_topk is None else group_score_topk
        group_scores = grouped.topk(min(per_group, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
        keep = group_scores.topk(topk_group, dim=-1, sorted=False).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        choice = choice.masked_fill(
            ~group_mask.repeat_interleave(num_experts // n_group, dim=-1), float("-inf")
        )
    indices = choice.topk(top_k, dim=-1, sorted=False).indices
    gates = scores.gather(1, indices)
    if norm_topk_prob:
        gates = gates / (gates.sum(dim=-1, keepdim=True) + 1e-20)
    return gates * routed_scaling_factor, indices, scores


class _Dispatch(torch.autograd.Function):
    """``x[order // k]``: every token copied once per assignment, sorted by expert.

    Backward is a gather and a sum over the k copies (``order`` is a permutation), not a scatter-add.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor, k: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(inverse)
        ctx.k = k
        return x[order // k]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        (inverse,) = ctx.saved_tensors
        return grad[inverse].view(-1, ctx.k, grad.shape[-1]).sum(1), None, None, None


class _Combine(torch.autograd.Function):
    """``sum_j y[inverse[t * k + j]]``: each token's k expert outputs (sorted by expert) summed back.

    Backward is the gather ``grad[order // k]``.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor, k: int) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(order)
        ctx.k = k
        return y[inverse].view(-1, k, y.shape[-1]).sum(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        (order,) = ctx.saved_tensors
        return grad[order // ctx.k], None, None, None


def grouped_experts(
    x: torch.Tensor,
    gates: torch.Tensor,
    indices: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    *,
    use_grouped_mm: bool = True,
) -> torch.Tensor:
    """Run the routed experts in grouped batches: sort assignments by expert, one GEMM pair per expert.

    The gate multiplies the expert's hidden activation (width I) rather than its output (width D): the same
    product, less memory traffic. Dispatch and combine are permutations with gather-only backward passes.

    Args:
        x: ``(n, D)`` tokens.
        gates: ``(n, k)`` gate values g.
        indices: ``(n, k)`` chosen experts.
        gate_up: ``(E, 2I, D)`` stacked [gate ; up] projection of every expert.
        down: ``(E, D, I)`` down projections.
        use_grouped_mm: use ``torch._grouped_mm`` (one call for all experts) when torch has it and there are
            at least as many assignments as experts.

    Returns:
        ``(n, D)``: ``sum_k gates[:, k] * FFN_{indices[:, k]}(x)``.
    """
    n, k = indices.shape
    num_experts, inter = gate_up.shape[0], down.shape[-1]
    flat = indices.reshape(-1)
    order = flat.argsort(stable=True)  # assignments sorted by expert
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    counts = torch.bincount(flat, minlength=num_experts)
    xs = _Dispatch.apply(x, order, inverse, k)  # (m, D), contiguous per expert
    gates_sorted = gates.reshape(-1)[order, None].to(x.dtype)
    # grouped_mm visits every expert; with fewer assignments than experts (decoding) a loop over the hit
    # experts issues fewer GEMMs
    grouped = use_grouped_mm and hasattr(torch, "_grouped_mm") and flat.numel() >= num_experts
    if grouped and x.dtype in (torch.float32, torch.bfloat16):
        offsets = counts.cumsum(0).to(torch.int32)
        h = torch._grouped_mm(xs, gate_up.transpose(1, 2), offs=offsets)
        h = F.silu(h[:, :inter]) * h[:, inter:] * gates_sorted
        ys = torch._grouped_mm(h, down.transpose(1, 2), offs=offsets)
    else:
        pieces = []
        for e, (piece, g) in enumerate(
            zip(xs.split(counts.tolist()), gates_sorted.split(counts.tolist()), strict=True)
        ):
            if piece.shape[0] == 0:
                continue
            h = piece @ gate_up[e].t()
            pieces.append((F.silu(h[:, :inter]) * h[:, inter:] * g) @ down[e].t())
        ys = torch.cat(pieces) if pieces else xs.new_zeros(0, x.shape[1])
    return _Combine.apply(ys, order, inverse, k)


def dense_experts_reference(
    x: torch.Tensor, gates: torch.Tensor, indices: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    """The definition, for tests: every expert on every token, weighted by a dense ``(n, E)`` gate matrix."""
    num_experts, inter = gate_up.shape[0], down.shape[-1]
    dense_gates = torch.zeros(x.shape[0], num_experts, dtype=x.dtype).scatter_add_(
        1, indices, gates.to(x.dtype)
    )
    out = torch.zeros_like(x)
    for e in range(num_experts):
        h = x @ gate_up[e].t()
        out = out + dense_gates[:, e : e + 1] * ((F.silu(h[:, :inter]) * h[:, inter:]) @ down[e].t())
    return out


def counted_experts(
    scores: torch.Tensor, routed: torch.Tensor, *, counts: str = "affinities"
) -> torch.Tensor:
    """The experts eq. 18's f_i counts per token.

    Args:
        scores: ``(n, E)`` unbiased affinities s.
        routed: ``(n, k)`` the experts the router chose (after the bias and the group limit).
        counts: "affinities" (the paper: the K_r highest unbiased affinities) or "routed".

    Returns:
        ``(n, k)`` expert indices.
    """
    if counts == "affinities":
        return scores.detach().topk(routed.shape[1], dim=-1, sorted=False).indices
    if counts == "routed":
        return routed
    raise ValueError(f"counts must be 'affinities' or 'routed', not {counts!r}")


def balance_loss(
    scores: torch.Tensor,
    indices: torch.Tensor,
    *,
    batch_size: int,
    mode: str,
    scoring_func: str = "sigmoid",
) -> torch.Tensor:
    """The f*P balance loss without alpha: sequence-wise (eqs. 17-20) or batch-wise.

    Args:
        scores: ``(n, E)`` affinities s (differentiable), n = batch_size * T in sequence order.
        indices: ``(n, k)`` the experts f_i counts (eq. 18: see :func:`counted_experts`).
        batch_size: sequences in the batch.
        mode: "sequence" (f and P per sequence, loss averaged over sequences) or "batch" (over all n tokens).
        scoring_func: "sigmoid" normalises s over the experts first (eq. 19); softmax scores are normalised.

    Returns:
        A scalar; 1 for a perfectly balanced routing with uniform affinities.
    """
    n, num_experts = scores.shape
    top_k = indices.shape[1]
    groups = batch_size if mode == "sequence" else 1
    if mode not in ("sequence", "batch"):
        raise ValueError(f"mode must be 'sequence' or 'batch', not {mode!r}")
    probs = scores / scores.sum(dim=-1, keepdim=True) if scoring_func == "sigmoid" else scores
    probs = probs.view(groups, n // groups, num_experts)
    chosen = torch.zeros(n, num_experts, dtype=probs.dtype, device=probs.device)
    chosen.scatter_(1, indices, 1.0)
    tokens = n // groups
    f = chosen.view(groups, tokens, num_experts).sum(1) * (num_experts / (top_k * tokens))  # (groups, E)
    p = probs.mean(1)  # (groups, E)
    return (f * p).sum(-1).mean()


class Router(nn.Module):
    """The gate: centroids e_i (``weight``, float32) and the routing bias b_i (``e_score_correction_bias``).

    Args:
        config: the model config.
    """

    def __init__(self, config: DeepSeekV3Config) -> None:
        super().__init__()
        self.config = config
        self.weight = nn.Parameter(
            torch.empty(config.n_routed_experts, config.hidden_size, dtype=torch.float32)
        )
        self.e_score_correction_bias = nn.Buffer(torch.zeros(config.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(n, D)`` -> gates ``(n, k)``, indices ``(n, k)``, affinities ``(n, E)``; see :func:`route`."""
        c = self.config
        compute = torch.promote_types(x.dtype, torch.float32)
        logits = F.linear(x.to(compute), self.weight.to(compute))
        return route(
            logits,
            self.e_score_correction_bias.to(compute),
            top_k=c.num_experts_per_tok,
            n_group=c.n_group,
            topk_group=c.topk_group,
            scoring_func=c.scoring_func,
            norm_topk_prob=c.norm_topk_prob,
            routed_scaling_factor=c.routed_scaling_factor,
            group_score_topk=c.group_score_topk,
        )


class Experts(nn.Module):
    """The routed experts' weights as stacked tensors (transformers' in-memory layout).

    Args:
        config: the model config.
    """

    def __init__(self, config: DeepSeekV3Config) -> None:
        super().__init__()
        e, d, i = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, d))  # per expert [W_gate ; W_up]
        self.down_proj = nn.Parameter(torch.empty(e, d, i))
        self.use_grouped_mm = True

    def forward(self, x: torch.Tensor, gates: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``(n, D)`` -> ``(n, D)``; see :func:`grouped_experts`."""
        return grouped_experts(
            x, gates, indices, self.gate_up_proj, self.down_proj, use_grouped_mm=self.use_grouped_mm
        )


class MoE(nn.Module):
    """A DeepSeekMoE FFN: shared experts plus routed experts, with load accounting for balancing.

    After each forward, ``last_load`` holds the tokens each expert received (``(E,)``, float) and ``aux_loss``
    the balance loss times alpha (training with ``balance_loss != "none"``; else None). In training mode the
    load is also added to ``pending_load``, which :func:`testtime.deepseek.balance.update_routing_bias`
    consumes after each optimizer step.

    Args:
        config: the model config.
    """

    def __init__(self, config: DeepSeekV3Config) -> None:
        super().__init__()
        self.config = config
        self.gate = Router(config)
        self.experts = Experts(config)
        self.shared_experts = (
            MLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts, fp8=config.fp8)
            if config.n_shared_experts > 0
            else None
        )
        e = config.n_routed_experts
        self.pending_load = nn.Buffer(torch.zeros(e, dtype=torch.float32), persistent=False)
        self.last_load = torch.zeros(e)
        self.aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, s, D) -> (b, s, D)`` (without the residual)."""
        b, s, d = x.shape
        flat = x.reshape(-1, d)
        gates, indices, scores = self.gate(flat)
        out = self.experts(flat, gates, indices)
        load = torch.bincount(indices.reshape(-1), minlength=self.config.n_routed_experts).float()
        self.last_load = load
        self.aux_loss = None
        if self.training:
            self.pending_load += load.to(self.pending_load.device)
            c = self.config
            if c.balance_loss != "none" and c.balance_loss_alpha > 0:
                counted = counted_experts(scores, indices, counts=c.balance_loss_counts)
                loss = balance_loss(
                    scores, counted, batch_size=b, mode=c.balance_loss, scoring_func=c.scoring_func
                )
                self.aux_loss = c.balance_loss_alpha * loss
        out = out.view(b, s, d)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out
