"""DeepSeekMoE: routing rules, grouped experts == dense loop, balance losses, the bias update, telemetry."""

from __future__ import annotations

import pytest
import torch

from testtime.deepseek import DeepSeekV3Config, DeepSeekV3ForCausalLM
from testtime.deepseek.balance import GammaSchedule, LoadTracker, max_violation, update_routing_bias
from testtime.deepseek.moe import MoE, balance_loss, dense_experts_reference, grouped_experts, route


def _moe(dtype: torch.dtype = torch.float64, **overrides: object) -> MoE:
    torch.manual_seed(0)
    values = dict(
        hidden_size=32,
        moe_intermediate_size=16,
        n_routed_experts=16,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
    )
    values.update(overrides)
    moe = MoE(DeepSeekV3Config.tiny(**values)).to(dtype)
    with torch.no_grad():
        moe.gate.float()
        for p in moe.parameters():
            p.normal_(0, 0.3)
    return moe


def test_route_follows_the_rules() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 16, generator=g)
    bias = torch.randn(16, generator=g) * 0.3
    gates, idx, scores = route(logits, bias, top_k=4, n_group=4, topk_group=2, routed_scaling_factor=2.5)
    # node-limited: at most topk_group groups per token
    assert ((idx // 4).sort(-1).values.diff(dim=-1) != 0).sum(-1).max() + 1 <= 2
    # gates are the UNBIASED sigmoid affinities of the chosen experts, normalised, times the scaling factor
    chosen = torch.sigmoid(logits).gather(1, idx)
    torch.testing.assert_close(gates, 2.5 * chosen / chosen.sum(-1, keepdim=True))
    # the choice uses the bias: brute force over group pairs
    biased = torch.sigmoid(logits) + bias
    for t in range(0, 500, 37):
        groups = biased[t].view(4, 4).topk(2, -1).values.sum(-1).topk(2).indices
        allowed = torch.cat([torch.arange(4 * int(gi), 4 * int(gi) + 4) for gi in groups])
        best = allowed[biased[t, allowed].topk(4).indices]
        assert set(best.tolist()) == set(idx[t].tolist())
    assert scores.shape == (500, 16)


@pytest.mark.parametrize("use_grouped_mm", [True, False])
def test_grouped_experts_equal_dense_loop(use_grouped_mm: bool) -> None:
    dtype = torch.float32 if use_grouped_mm else torch.float64
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, generator=g, dtype=dtype, requires_grad=True)
    gate_up = torch.randn(8, 2 * 16, 32, generator=g, dtype=dtype, requires_grad=True)
    down = torch.randn(8, 32, 16, generator=g, dtype=dtype, requires_grad=True)
    idx = torch.randint(0, 7, (64, 2), generator=g)  # expert 7 gets nothing
    idx[:, 1] = (idx[:, 0] + 1 + torch.randint(0, 5, (64,), generator=g)) % 7
    gates = torch.rand(64, 2, generator=g, dtype=dtype)
    got = grouped_experts(x, gates, idx, gate_up, down, use_grouped_mm=use_grouped_mm)
    want = dense_experts_reference(x, gates, idx, gate_up, down)
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    w = torch.randn(64, 32, generator=g, dtype=dtype)
    grads = torch.autograd.grad((got * w).sum(), (x, gate_up, down))
    grads_ref = torch.autograd.grad((want * w).sum(), (x, gate_up, down))
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=10 * tol, rtol=10 * tol)


def test_balance_losses_by_hand() -> None:
    g = torch.Generator().manual_seed(2)
    b, t, e, k = 3, 10, 8, 2
    scores = torch.rand(b * t, e, generator=g, dtype=torch.float64)
    idx = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(b * t)])
    per_seq = []
    for s in range(b):
        rows = range(s * t, (s + 1) * t)
        total = 0.0
        for i in range(e):
            f = e / (k * t) * sum(int(i in idx[r].tolist()) for r in rows)
            p = sum(float(scores[r, i] / scores[r].sum()) for r in rows) / t
            total += f * p
        per_seq.append(total)
    seq = balance_loss(scores, idx, batch_size=b, mode="sequence")
    assert float(seq) == pytest.approx(sum(per_seq) / b, rel=1e-12)
    batch = balance_loss(scores, idx, batch_size=b, mode="batch")
    f = torch.zeros(e, dtype=torch.float64).scatter_add_(
        0, idx.flatten(), torch.ones(b * t * k, dtype=torch.float64)
    )
    f = f * e / (k * b * t)
    p = (scores / scores.sum(-1, keepdim=True)).mean(0)
    assert float(batch) == pytest.approx(float((f * p).sum()), rel=1e-12)


def test_moe_layer_matches_reference_and_records_load() -> None:
    moe = _moe().eval()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    out = moe(x)
    gates, idx, _ = moe.gate(x.view(-1, 32))
    want = dense_experts_reference(
        x.view(-1, 32), gates, idx, moe.experts.gate_up_proj, moe.experts.down_proj
    ) + moe.shared_experts(x.view(-1, 32))
    torch.testing.assert_close(out.view(-1, 32), want, atol=1e-12, rtol=1e-12)
    assert moe.last_load.sum() == 2 * 9 * 4
    assert moe.aux_loss is None and moe.pending_load.sum() == 0  # eval mode: nothing pending
    moe.train()
    moe(x)
    assert moe.pending_load.sum() == 2 * 9 * 4 and moe.aux_loss is not None and moe.aux_loss > 0


def test_bias_update_moves_loads_toward_balance() -> None:
    moe = _moe(torch.float32, n_routed_experts=16, num_experts_per_tok=2, n_group=1, topk_group=1)
    g = torch.Generator().manual_seed(5)
    direction = torch.randn(32, generator=g)
    with torch.no_grad():
        moe.gate.weight[:4] += 0.3 * direction  # experts 0-3 attract tokens along `direction`
    moe.train()
    x = torch.randn(256, 32, generator=g) + direction  # correlated tokens: a strongly imbalanced router

    def violation() -> float:
        with torch.no_grad():
            moe(x.view(4, 64, 32))
        return float(max_violation(moe.last_load))

    start = violation()
    update_routing_bias(moe, 0.0)  # resets the pending load only
    assert torch.equal(moe.gate.e_score_correction_bias, torch.zeros(16))
    history = []
    for _ in range(150):
        history.append(violation())
        load = moe.pending_load.clone()
        before = moe.gate.e_score_correction_bias.clone()
        update_routing_bias(moe, 0.01)
        step = moe.gate.e_score_correction_bias - before
        torch.testing.assert_close(step, 0.01 * torch.sign(load.mean() - load))  # the rule, exactly
    assert start > 2.0
    assert sum(history[-20:]) / 20 < 0.35 * start


def test_gamma_schedule_and_tracker() -> None:
    schedule = GammaSchedule(gamma=0.001, stop_fraction=0.5)
    assert schedule(0, 100) == 0.001 and schedule(49, 100) == 0.001 and schedule(50, 100) == 0.0
    model = DeepSeekV3ForCausalLM(DeepSeekV3Config.tiny()).eval()
    tracker = LoadTracker(model)
    with torch.no_grad():
        model(torch.randint(0, 128, (2, 16)))
        tracker.record("code")
        model(torch.randint(128, 256, (2, 16)))
        tracker.record("prose")
    summary = tracker.summary()
    assert len(summary["dead_experts"]) == 2  # the main stack's MoE layers, not the MTP module's
    assert summary["maxvio_global"] >= 0 and summary["maxvio_batch"] >= 0
    assert set(summary["domain_load"]) == {"code", "prose"}
    code = torch.tensor(summary["domain_load"]["code"])
    torch.testing.assert_close(code.sum(-1), torch.ones(2))
    assert summary["dead_experts"] == [int((row == 0).sum()) for row in tracker.total]


_DDP_WORKER = """
import sys
import torch
import torch.distributed as dist
from testtime.deepseek import DeepSeekV3Config
from testtime.deepseek.balance import update_routing_bias
from testtime.deepseek.moe import MoE

rank, world, init_file, out_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
moe = MoE(DeepSeekV3Config.tiny(n_routed_experts=8, num_experts_per_tok=2, n_group=1, topk_group=1))
load = torch.arange(8.0) if rank == 0 else 3 * torch.arange(8.0).flip(0)  # opposite imbalances
moe.pending_load.copy_(load)
update_routing_bias(moe, 0.1)
gathered = [torch.zeros(8) for _ in range(world)]
dist.all_gather(gathered, moe.gate.e_score_correction_bias.clone())
if rank == 0:
    torch.save(torch.stack(gathered), out_file)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_bias_update_all_reduces_loads_under_ddp(tmp_path) -> None:
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    out = tmp_path / "biases.pt"
    args = ["2", str(tmp_path / "init"), str(out)]
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), *args]) for rank in range(2)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    biases = torch.load(out)
    total = torch.arange(8.0) + 3 * torch.arange(8.0).flip(0)  # the summed loads: rank 1's imbalance wins
    expected = 0.1 * torch.sign(total.mean() - total)
    torch.testing.assert_close(biases[0], expected)
    torch.testing.assert_close(biases[1], expected)


def test_trainer_hook_applies_the_step_schedules() -> None:
    from testtime.deepseek.train import DeepSeekV3ForTraining

    config = DeepSeekV3Config.tiny(
        bias_update_speed=0.5, bias_update_stop_step=2, mtp_loss_weight=0.3, mtp_weight_switch_step=1
    )
    model = DeepSeekV3ForTraining(config).train()
    ids = torch.randint(0, 256, (2, 8))
    out = model(ids[:, :-1], ids[:, 1:])  # next-token labels, the trainer's convention
    assert out.loss is not None and "maxvio_batch" in out.metrics
    biases = []
    for _ in range(3):
        model(ids[:, :-1], ids[:, 1:])
        model.after_optimizer_step()
        biases.append(model.moe_layers()[0].gate.e_score_correction_bias.clone())
        if len(biases) == 1:
            assert model.mtp_loss_weight == 0.1  # lambda switched after the first step
    assert biases[0].abs().max() == 0.5 and (biases[1] - biases[0]).abs().max() == 0.5
    assert torch.equal(biases[2], biases[1])  # gamma is 0 from step 2 on


def _hand_route(
    biased: list[float], *, top_k: int, n_group: int, topk_group: int, per_group: int
) -> set[int]:
    """Node-limited routing of one token, written out: group score = sum of its per_group best entries."""
    size = len(biased) // n_group
    group_score = [
        sum(sorted(biased[g * size : (g + 1) * size], reverse=True)[:per_group]) for g in range(n_group)
    ]
    groups = sorted(range(n_group), key=lambda g: group_score[g], reverse=True)[:topk_group]
    allowed = [e for g in groups for e in range(g * size, (g + 1) * size)]
    return set(sorted(allowed, key=lambda e: biased[e], reverse=True)[:top_k])


def test_group_score_is_the_papers_top_kr_over_m_and_the_release_rule_is_an_option() -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(400, 16, generator=g, dtype=torch.float64)
    bias = torch.randn(16, generator=g, dtype=torch.float64) * 0.3
    biased = (torch.sigmoid(logits) + bias).tolist()
    shape = dict(top_k=2, n_group=4, topk_group=2)  # K_r / M = 1: the paper's rule differs from the top 2
    _, paper, _ = route(logits, bias, **shape)
    _, release, _ = route(logits, bias, **shape, group_score_topk=2)
    differ = 0
    for t in range(400):
        want_paper = _hand_route(biased[t], **shape, per_group=1)
        want_release = _hand_route(biased[t], **shape, per_group=2)
        assert set(paper[t].tolist()) == want_paper
        assert set(release[t].tolist()) == want_release
        differ += want_paper != want_release
    assert differ > 20  # the two rules route a visible share of tokens differently at this shape
    # K_r / M not whole: rounded up (K_r = 3, M = 2 -> the two best of each group)
    _, odd, _ = route(logits, bias, top_k=3, n_group=4, topk_group=2)
    for t in range(0, 400, 7):
        assert set(odd[t].tolist()) == _hand_route(biased[t], top_k=3, n_group=4, topk_group=2, per_group=2)


def test_sequence_balance_loss_counts_the_top_k_unbiased_affinities() -> None:
    """Eq. 18 by hand: f_i counts s_i,t among the K_r highest unbiased affinities, not the routed experts."""
    moe = _moe(torch.float64, balance_loss="sequence", balance_loss_alpha=0.5)
    with torch.no_grad():
        moe.gate.e_score_correction_bias.copy_(torch.linspace(-0.4, 0.4, 16))  # routing != top-k of s
    moe.train()
    b, t, e, k = 2, 7, 16, 4
    x = torch.randn(b, t, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    moe(x)
    with torch.no_grad():
        _, routed, scores = moe.gate(x.view(-1, 32))
    s = scores.tolist()

    def by_hand(counted: list[set[int]]) -> float:
        total = 0.0
        for seq in range(b):
            rows = range(seq * t, (seq + 1) * t)
            for i in range(e):
                f = e / (k * t) * sum(i in counted[r] for r in rows)
                p = sum(s[r][i] / sum(s[r]) for r in rows) / t
                total += f * p
        return 0.5 * total / b

    top = [set(sorted(range(e), key=lambda j: s[r][j], reverse=True)[:k]) for r in range(b * t)]
    chosen = [set(row) for row in routed.tolist()]
    assert top != chosen
    assert moe.aux_loss is not None
    assert float(moe.aux_loss.detach()) == pytest.approx(by_hand(top), rel=1e-12)
    moe.config.balance_loss_counts = "routed"
    moe(x)
    assert float(moe.aux_loss.detach()) == pytest.approx(by_hand(chosen), rel=1e-12)


def test_config_json_without_our_section_keeps_the_release_group_rule() -> None:
    config = DeepSeekV3Config.tiny(n_group=4, topk_group=2)
    assert config.group_score_topk is None  # the paper's rule by default
    data = config.to_hf_dict()
    assert DeepSeekV3Config.from_hf_dict(data).group_score_topk is None
    del data["testtime"]
    assert DeepSeekV3Config.from_hf_dict(data).group_score_topk == 2
    with pytest.raises(ValueError, match="balance_loss_counts"):
        DeepSeekV3Config.tiny(balance_loss_counts="chosen")


def test_the_trainer_runs_the_exported_schedules() -> None:
    from testtime.deepseek.balance import BalanceHook
    from testtime.deepseek.mtp import MTPWeightSchedule
    from testtime.deepseek.train import DeepSeekV3ForTraining

    gamma = GammaSchedule(gamma=0.5, stop_step=2)
    assert [gamma(s) for s in range(4)] == [0.5, 0.5, 0.0, 0.0]
    assert [GammaSchedule(gamma=0.5, stop_fraction=0.5)(s, 4) for s in range(4)] == [0.5, 0.5, 0.0, 0.0]
    assert GammaSchedule(gamma=0.5, stop_fraction=0.5)(3) == 0.5  # total unknown: no stop
    lam = MTPWeightSchedule(first=0.3, then=0.1, switch_step=1)
    assert [lam(s) for s in range(3)] == [0.3, 0.1, 0.1]
    model = DeepSeekV3ForTraining(DeepSeekV3Config.tiny(bias_update_stop_step=2, mtp_weight_switch_step=1))
    hook = model.balance_hook
    assert isinstance(hook, BalanceHook) and isinstance(hook.mtp_weight, MTPWeightSchedule)
    assert isinstance(hook.gamma, GammaSchedule) and hook.gamma.stop_step == 2
    model.after_optimizer_step()
    assert model.last_balance["gamma"] == model.config.bias_update_speed and model.mtp_loss_weight == 0.1
