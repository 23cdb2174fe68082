"""SVF core against references: SVD reconstruction, identity == base model, factored grad == merged autograd,
engine sees z changes at once, experts round-trip, wrong base model refused, export loads."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from testtime.errors import UserError
from testtime.svf import SVF, SVFConfig, expert_from_svf, load_expert, save_expert
from testtime.svf.svf import (
    combine_multipliers,
    compose_weight,
    effective_multiplier,
    factored_linear,
    parse_layers,
    select_targets,
    svd,
)

IDS = torch.tensor([[5, 17, 42, 9, 33, 2, 7, 8]])


@pytest.fixture()
def model64(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float64).eval()


def _svf(model, **kw) -> SVF:
    return SVF(model, SVFConfig(dtype=torch.float64, cache=False, **kw))


def test_svd_reconstructs_weight():
    torch.manual_seed(0)
    for shape in [(12, 7), (7, 12), (9, 9)]:
        w = torch.randn(*shape, dtype=torch.float64)
        u, s, vh = svd(w, dtype=torch.float64)
        assert u.shape == (shape[0], min(shape)) and vh.shape == (min(shape), shape[1])
        torch.testing.assert_close(compose_weight(u, s, vh, torch.ones_like(s)), w, rtol=0, atol=1e-12)
        # Orthonormal columns / rows.
        torch.testing.assert_close(u.T @ u, torch.eye(min(shape), dtype=torch.float64), rtol=0, atol=1e-12)
    w32 = torch.randn(40, 24)
    u, s, vh = svd(w32)
    assert u.dtype == torch.float32
    torch.testing.assert_close(compose_weight(u, s, vh, torch.ones_like(s)), w32, rtol=0, atol=1e-5)


def test_factored_linear_equals_merged_weight():
    torch.manual_seed(1)
    w, x, b = torch.randn(6, 10, dtype=torch.float64), torch.randn(3, 4, 10, dtype=torch.float64), None
    u, s, vh = svd(w, dtype=torch.float64)
    f = torch.rand(6, dtype=torch.float64) + 0.5
    reference = x @ compose_weight(u, s, vh, f).T
    torch.testing.assert_close(factored_linear(x, u, s, vh, f, b), reference, rtol=0, atol=1e-12)


def test_sigmoid_form_keeps_nuclear_norm_and_constant_is_identity():
    s = torch.tensor([3.0, 2.0, 0.5], dtype=torch.float64)
    m = torch.sigmoid(torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))
    f = effective_multiplier(m, s, "sigmoid")
    # Hand computation: f = m * sum(s) / sum(s * m).
    expected = m * 5.5 / (3 * m[0] + 2 * m[1] + 0.5 * m[2])
    torch.testing.assert_close(f, expected)
    torch.testing.assert_close((s * f).sum(), s.sum())
    const = torch.sigmoid(torch.full((3,), 0.1, dtype=torch.float64))
    torch.testing.assert_close(effective_multiplier(const, s, "sigmoid"), torch.ones(3, dtype=torch.float64))


def test_combine_multipliers_hand_computed():
    m = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 5.0])]
    torch.testing.assert_close(combine_multipliers(m, torch.tensor([0.5, 2.0])), torch.tensor([6.5, 11.0]))


def test_targets_and_layers(model64):
    mlp = select_targets(model64)
    assert len(mlp) == 2 * 3 and all(".mlp." in n for n in mlp)
    attn = select_targets(model64, targets=("attn",), layers=[1])
    assert attn == [f"model.layers.1.self_attn.{p}_proj" for p in "qkvo"]
    assert select_targets(model64, targets=("q_proj", "down_proj"), layers=[0]) == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.mlp.down_proj",
    ]
    with pytest.raises(UserError, match="no linear layer"):
        select_targets(model64, targets=("nonsense",))
    assert parse_layers("0-2,5", 8) == [0, 1, 2, 5]
    assert parse_layers("all", 8) is None
    for bad in ("x", "3-1", "0-9"):
        with pytest.raises(UserError):
            parse_layers(bad, 8)


@pytest.mark.parametrize("parameterization", ["raw", "sigmoid"])
def test_identity_reproduces_base_logits(model64, parameterization):
    with torch.no_grad():
        base = model64(IDS).logits
    svf = _svf(model64, targets=("all",), parameterization=parameterization)
    with torch.no_grad(), svf.factored() as factored:
        factored_logits = factored(IDS).logits
    torch.testing.assert_close(factored_logits, base, rtol=0, atol=1e-10)
    with torch.no_grad(), svf.factored() as factored, svf.using_multipliers(None):
        torch.testing.assert_close(factored(IDS).logits, base, rtol=0, atol=0)  # the reference pass
    svf.merge()
    with torch.no_grad():
        merged_logits = model64(IDS).logits
    torch.testing.assert_close(merged_logits, base, rtol=0, atol=0)  # W + 0 exactly


def test_factored_and_merged_agree_for_random_z(model64):
    svf = _svf(model64)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in svf.z.values():
            p.copy_(torch.rand_like(p) + 0.5)
        with svf.factored() as factored:
            factored_logits = factored(IDS).logits
        svf.merge()
        merged_logits = model64(IDS).logits
        svf.restore()
        base = model64(IDS).logits
    torch.testing.assert_close(factored_logits, merged_logits, rtol=0, atol=1e-10)
    assert (merged_logits - base).abs().max() > 1e-3


@pytest.mark.parametrize("parameterization", ["raw", "sigmoid"])
def test_factored_gradient_equals_autograd_on_merged_weight(model64, parameterization):
    svf = _svf(model64, parameterization=parameterization, init_noise=0.2)
    target = IDS[0, 1:]

    def loss_of(logits):
        return torch.nn.functional.cross_entropy(logits[0, :-1], target)

    with svf.factored() as factored:
        loss_of(factored(IDS).logits).backward()
    factored_grads = {n: svf.z[svf.key(n)].grad.clone() for n in svf.names}
    svf.zero_grad()

    # Reference: the merged weight W' = U diag(s f(z)) Vh as a function of z, through torch.func.
    dec = svf.decomposition
    params = {n: p for n, p in model64.named_parameters()}
    zs = {n: svf.z[svf.key(n)] for n in svf.names}

    def loss_from_z(z_values):
        weights = dict(params)
        for name in svf.names:
            m = torch.sigmoid(z_values[name]) if parameterization == "sigmoid" else z_values[name]
            f = effective_multiplier(m, dec.s[name], parameterization)
            weights[f"{name}.weight"] = compose_weight(dec.u[name], dec.s[name], dec.vh[name], f)
        logits = torch.func.functional_call(model64, weights, (IDS,)).logits
        return loss_of(logits)

    reference = torch.func.grad(loss_from_z)({n: z.detach() for n, z in zs.items()})
    for name in svf.names:
        assert factored_grads[name].abs().max() > 0
        torch.testing.assert_close(factored_grads[name], reference[name], rtol=1e-8, atol=1e-12)


def test_engine_samples_adapted_weights_right_after_z_changes(tiny_llama_dir):
    from testtime.llm.local import LocalLLM
    from testtime.llm.reference import hf_generate_greedy
    from testtime.testing import build_tiny_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    reference_model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    llm = LocalLLM(model, build_tiny_tokenizer())
    assert llm.engine.lean
    prompt, completion = [5, 17, 42, 9], [33, 2, 7, 8, 100, 3]
    base_scores = llm.engine.score([prompt], [completion])[0]  # packs the base weights
    svf = SVF(model, SVFConfig(targets=("all",), cache=False))
    for seed in (0, 1):
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in svf.z.values():
                p.copy_(torch.rand_like(p) * 2)
        svf.merge(llm)
        got = llm.engine.generate([prompt], max_new_tokens=8, temperature=0).tokens[0]
        scores = llm.engine.score([prompt], [completion])[0]
        # Independent reference: transformers on a fresh model holding the merged weights.
        with torch.no_grad():
            for name in svf.names:
                reference_model.get_submodule(name).weight.copy_(svf.merged_weight(name))
            logp = reference_model(torch.tensor([prompt + completion])).logits[0].log_softmax(-1)
        expected = [logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(completion)]
        rows, _ = hf_generate_greedy(
            reference_model, [prompt], max_new_tokens=8, eos_token_ids=[], pad_token_id=0
        )
        assert got == rows[0][: len(got)]
        assert scores == pytest.approx(expected, abs=1e-4)
        # Through the LLM layer's scheduler too (the path rollouts take).
        text = "the quick brown fox"
        sampled = llm.generate([text], temperature=0, max_tokens=6)[0][0].token_ids
        ids = llm.encode(text)
        rows, _ = hf_generate_greedy(
            reference_model, [ids], max_new_tokens=6, eos_token_ids=llm.eos_token_ids, pad_token_id=0
        )
        assert sampled == rows[0][: len(sampled)]
        assert max(abs(a - b) for a, b in zip(scores, base_scores, strict=True)) > 1e-3


def test_decomposition_cache_is_keyed_by_weights(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TESTTIME_CACHE", str(tmp_path))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    first = SVF(model)
    files = list((tmp_path / "svf").glob("*.safetensors"))
    assert len(files) == 1
    second = SVF(model)  # read from the cache
    for n in first.names:
        torch.testing.assert_close(first.decomposition.s[n], second.decomposition.s[n], rtol=0, atol=0)
    with torch.no_grad():
        model.get_submodule(first.names[0]).weight.add_(0.1)
    third = SVF(model)
    assert third.weights_hash != first.weights_hash
    assert len(list((tmp_path / "svf").glob("*.safetensors"))) == 2


def test_expert_round_trip_and_wrong_base_refused(tiny_llama_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    svf = SVF(model, SVFConfig(cache=False, parameterization="sigmoid", init_noise=0.3))
    expert = expert_from_svf(svf, base_model="tiny", task="toy", metrics={"val_accuracy": 0.5})
    path = save_expert(expert, tmp_path / "e" / "toy.safetensors")
    loaded = load_expert(path)
    assert loaded.metadata() == expert.metadata()
    for n in svf.names:
        torch.testing.assert_close(loaded.vectors[n], expert.vectors[n], rtol=0, atol=0)
    fresh = SVF(model, SVFConfig(cache=False, parameterization="sigmoid"))
    loaded.apply(fresh)
    for n in svf.names:
        torch.testing.assert_close(fresh.z[fresh.key(n)].detach(), svf.z[svf.key(n)].detach())

    from testtime.testing import save_tiny_llama

    other_dir = save_tiny_llama(tmp_path / "other", seed=1)
    other = AutoModelForCausalLM.from_pretrained(other_dir, dtype=torch.float32).eval()
    with pytest.raises(UserError, match="only applies to the exact model"):
        loaded.apply(SVF(other, SVFConfig(cache=False, parameterization="sigmoid")))
    with pytest.raises(UserError, match="matrices"):
        loaded.apply(SVF(model, SVFConfig(cache=False, parameterization="sigmoid", layers=(0,))))
    # Another architecture (3 layers): the same targets select other matrices, named as another base model.
    deeper = AutoModelForCausalLM.from_pretrained(save_tiny_llama(tmp_path / "deep", num_layers=3)).eval()
    with pytest.raises(UserError, match="trained on another base model .*only applies to the exact model"):
        loaded.apply(SVF(deeper, SVFConfig(cache=False, parameterization="sigmoid")))
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(UserError):
        load_expert(tmp_path / "junk.safetensors")
    with pytest.raises(UserError, match="not found"):
        load_expert(tmp_path / "missing.safetensors")


def test_export_is_a_plain_checkpoint(tiny_llama_dir, tmp_path):
    from testtime.llm.loading import load_model
    from testtime.testing import build_tiny_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    svf = SVF(model, SVFConfig(cache=False))
    with torch.no_grad():
        for p in svf.z.values():
            p.mul_(1.5)
    out = svf.export(tmp_path / "adapted", build_tiny_tokenizer())
    loaded, _ = load_model(out)
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits, rtol=0, atol=1e-6)
