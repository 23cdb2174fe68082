"""Multi-token prediction: the loss by hand, the schedule, and speculative decoding == greedy decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from testtime.deepseek import DeepSeekV3Config, DeepSeekV3ForCausalLM
from testtime.deepseek.generate import generate
from testtime.deepseek.moe import MoE
from testtime.deepseek.mtp import MTPWeightSchedule, speculative_generate


def _model(depth: int = 2) -> DeepSeekV3ForCausalLM:
    torch.manual_seed(0)
    config = DeepSeekV3Config.tiny(num_nextn_predict_layers=depth, initializer_range=0.1, mtp_loss_weight=0.3)
    model = DeepSeekV3ForCausalLM(config).double().eval()
    for m in model.moe_layers():
        m.gate.float()
    return model


def test_mtp_loss_equals_hand_computation() -> None:
    model = _model(depth=2)
    ids = torch.randint(0, 256, (2, 12))
    labels = ids.clone()
    labels[0, 5] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
        # by hand, one depth at a time, position by position for the targets
        emb, head = model.model.embed_tokens, model.lm_head
        previous = out.hidden_states
        expected = []
        for k, module in enumerate(model.mtp, start=1):
            span = 12 - k
            x = module.eh_proj(
                torch.cat([module.enorm(emb(ids[:, k:])), module.hnorm(previous[:, :span])], -1)
            )
            cos, sin = model.model.rotary(torch.arange(span), x.dtype)
            x = x + module.self_attn(module.input_layernorm(x), cos, sin)
            x = x + module.mlp(module.post_attention_layernorm(x))
            previous = module.shared_head.norm(x)
            terms = []
            for b in range(2):
                for i in range(span - 1):  # position i predicts t_{i+k+1}
                    target = labels[b, i + k + 1]
                    if target != -100:
                        terms.append(-F.log_softmax(head(previous[b, i]), -1)[target])
            expected.append(torch.stack(terms).mean())
        main = torch.stack(
            [
                -F.log_softmax(out.logits[b, i], -1)[labels[b, i + 1]]
                for b in range(2)
                for i in range(11)
                if labels[b, i + 1] != -100
            ]
        ).mean()
    for got, want in zip(out.mtp_losses, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out.lm_loss, main)
    torch.testing.assert_close(out.loss, main + 0.3 * (expected[0] + expected[1]) / 2)
    assert out.aux_loss is None  # eval mode: no balance loss


def test_training_loss_includes_balance_and_grads_reach_everything() -> None:
    model = _model(depth=1).train()
    ids = torch.randint(0, 256, (2, 10))
    out = model(ids, labels=ids)
    assert out.aux_loss is not None and out.aux_loss > 0
    torch.testing.assert_close(out.loss, out.lm_loss + 0.3 * out.mtp_loss + out.aux_loss)
    out.loss.backward()
    assert model.mtp[0].eh_proj.weight.grad.abs().sum() > 0
    assert model.mtp[0].mlp.gate.weight.grad.abs().sum() > 0
    assert model.model.layers[1].mlp.experts.gate_up_proj.grad.abs().sum() > 0


def test_lambda_schedule() -> None:
    schedule = MTPWeightSchedule()
    assert schedule(0, 148) == 0.3 and schedule(99, 148) == 0.3 and schedule(100, 148) == 0.1


@pytest.mark.parametrize("drafter", ["mtp", "oracle", "wrong"])
def test_speculative_decoding_equals_greedy(drafter: str) -> None:
    model = _model(depth=1)
    prompt = torch.randint(0, 256, (1, 7))
    plain = generate(model, prompt, max_new_tokens=25)
    custom = None
    if drafter == "oracle":  # proposes the true greedy next token: every draft is accepted
        future = plain[0, 7:].tolist()
        custom = lambda hidden, tokens, seen=[0]: _oracle(future, seen, tokens)  # noqa: E731
    elif drafter == "wrong":
        custom = lambda hidden, tokens: 0 if int(tokens[0, -1]) else 1  # noqa: E731
    out, stats = speculative_generate(model, prompt, max_new_tokens=25, drafter=custom)
    assert torch.equal(out, plain)
    assert stats.new_tokens == 25 and 0 <= stats.acceptance_rate <= 1
    if drafter == "oracle":
        assert stats.acceptance_rate == 1.0 and stats.main_steps == 12
    if drafter == "mtp":
        assert stats.drafted == stats.main_steps


def _oracle(future: list[int], seen: list[int], tokens: torch.Tensor) -> int:
    seen[0] += tokens.shape[1]  # tokens pending so far count the produced ones (after the prompt)
    produced = seen[0] - 6  # the first call carries the prompt's 6 shifted tokens plus the first new token
    return future[produced] if produced < len(future) else 0


def test_mtp_drafter_cache_matches_full_module_run() -> None:
    """The drafter's incremental MTP cache gives the same draft logits as running the module on everything."""
    from testtime.deepseek.mtp import mtp_drafter

    model = _model(depth=1)
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        out = model(ids)
        module = model.mtp[0]
        cos, sin = model.model.rotary(torch.arange(8), out.hidden_states.dtype)
        full = module(out.hidden_states[:, :8], model.model.embed_tokens(ids[:, 1:]), cos, sin)
        want = [int(model.lm_head(full[0, i]).argmax()) for i in (4, 7)]
        cache = model.new_cache(1, mtp=True)
        draft = mtp_drafter(model, cache)
        got = [draft(out.hidden_states[:, :5], ids[:, 1:6]), draft(out.hidden_states[:, 5:8], ids[:, 6:9])]
    assert got == want and cache.length == 8


def test_next_token_labels_give_the_same_losses() -> None:
    model = _model(depth=2)
    ids = torch.randint(0, 256, (2, 12))
    shifted = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)  # the trainer's convention
    with torch.no_grad():
        a = model(ids, labels=ids)
        b = model(ids, labels=shifted, shift_labels=False)
    torch.testing.assert_close(a.loss, b.loss)
    for x, y in zip(a.mtp_losses, b.mtp_losses, strict=True):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("how", ["lambda_zero", "short_sequence"])
def test_an_mtp_depth_that_does_not_run_adds_no_stale_balance_loss(how: str) -> None:
    """Regression: a skipped MTP depth's MoE kept the previous forward's aux_loss (backward failed)."""
    torch.manual_seed(0)
    config = DeepSeekV3Config.tiny(num_nextn_predict_layers=2, balance_loss_alpha=0.01)
    model = DeepSeekV3ForCausalLM(config).train()
    ids = torch.randint(0, 256, (2, 12))
    model(ids, labels=ids).loss.backward()
    if how == "lambda_zero":
        model.mtp_loss_weight = 0.0
        second = ids
    else:
        second = ids[:, :3]  # depth 2 has no target left at length 3 (labels shifted inside)
    out = model(second, labels=second)
    out.loss.backward()  # used to raise "Trying to backward through the graph a second time"

    def losses(module: torch.nn.Module) -> list[torch.Tensor]:
        return [m.aux_loss for m in module.modules() if isinstance(m, MoE) and m.aux_loss is not None]

    ran = losses(model.model) + (losses(model.mtp[0]) if how == "short_sequence" else [])
    assert ran and not losses(model.mtp[1]) and out.aux_loss is not None
    torch.testing.assert_close(out.aux_loss, torch.stack(ran).sum())
