"""DeepSeek-V3 model: parity with transformers, MLA paths, cached decoding, checkpoint round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from testtime.deepseek import DeepSeekV3Config, DeepSeekV3ForCausalLM
from testtime.deepseek.convert import from_checkpoint_keys, to_checkpoint_keys


def _hf_tiny(path: Path, *, seed: int = 0, variant: bool = False) -> object:
    """A random transformers DeepseekV3ForCausalLM with YaRN, group routing and a non-zero routing bias.

    ``variant``: tied embeddings, no query compression, half-split rope layout, plain RoPE, 2 dense layers.
    """
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(seed)
    extra: dict[str, object] = {}
    if variant:
        extra = dict(
            tie_word_embeddings=True,
            q_lora_rank=None,
            rope_interleave=False,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
            first_k_dense_replace=2,
        )
    config = DeepseekV3Config(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=96,
        moe_intermediate_size=24,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_shared_experts=1,
        n_routed_experts=8,
        kv_lora_rank=16,
        q_lora_rank=24,
        qk_rope_head_dim=8,
        v_head_dim=12,
        qk_nope_head_dim=8,
        n_group=4,
        topk_group=2,
        num_experts_per_tok=3,
        first_k_dense_replace=1,
        routed_scaling_factor=2.5,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 16,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "beta_fast": 32,
            "beta_slow": 1,
        },
        max_position_embeddings=64,
        initializer_range=0.2,
    )
    for key, value in extra.items():
        setattr(config, key, value)
    model = DeepseekV3ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers[config.first_k_dense_replace :]:
            layer.mlp.gate.e_score_correction_bias.copy_(torch.randn(8) * 0.2)
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("hf-deepseek")
    return path, _hf_tiny(path)


def test_logits_equal_transformers(hf_dir: tuple[Path, object]) -> None:
    path, hf = hf_dir
    ours = DeepSeekV3ForCausalLM.from_pretrained(path)
    assert ours.config.n_group == 4 and ours.config.rope_scaling is not None
    biases = [m.gate.e_score_correction_bias for m in ours.moe_layers()[:2]]
    assert all(b.abs().min() > 0 for b in biases)
    ids = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids, labels=ids)
        got = ours(ids, labels=ids)
        torch.testing.assert_close(got.logits, expected.logits, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(got.lm_loss, expected.loss, atol=1e-5, rtol=1e-5)
        # the routing bias matters here: without it the routing (and the logits) change
        for m in ours.moe_layers():
            m.gate.e_score_correction_bias.zero_()
        assert (ours(ids).logits - expected.logits).abs().max() > 1e-3


def test_other_layouts_equal_transformers(tmp_path: Path) -> None:
    hf = _hf_tiny(tmp_path, seed=3, variant=True)
    ours = DeepSeekV3ForCausalLM.from_pretrained(tmp_path)
    c = ours.config
    assert (
        c.tie_word_embeddings and c.q_lora_rank is None and not c.rope_interleave and c.rope_scaling is None
    )
    ids = torch.randint(0, 97, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=2e-5, rtol=1e-4)


def test_save_load_lossless_and_transformers_reads_it(tmp_path: Path, hf_dir: tuple[Path, object]) -> None:
    from safetensors import safe_open
    from transformers import DeepseekV3ForCausalLM

    model = DeepSeekV3ForCausalLM(DeepSeekV3Config.tiny(num_nextn_predict_layers=2))
    with torch.no_grad():
        for m in model.moe_layers():
            m.gate.e_score_correction_bias.normal_()
    model.save_pretrained(tmp_path)
    names = set(safe_open(tmp_path / "model.safetensors", "pt").keys())
    layers = model.config.num_hidden_layers
    for k in range(2):  # the release's MTP keys
        for key in ("embed_tokens", "enorm", "hnorm", "eh_proj", "shared_head.norm", "shared_head.head"):
            assert f"model.layers.{layers + k}.{key}.weight" in names
        assert f"model.layers.{layers + k}.mlp.experts.7.down_proj.weight" in names
    assert (
        "model.layers.0.mlp.gate_proj.weight" in names
        and "model.layers.1.mlp.experts.0.up_proj.weight" in names
    )
    loaded = DeepSeekV3ForCausalLM.from_pretrained(tmp_path)
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert loaded.config == model.config
    # transformers reads our directory (it skips the MTP layers) and computes the same logits
    hf = DeepseekV3ForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model.eval()(ids).logits, atol=2e-5, rtol=1e-4)


def test_checkpoint_keys_round_trip_and_fp8_dequant() -> None:
    config = DeepSeekV3Config.tiny()
    state = DeepSeekV3ForCausalLM(config).state_dict()
    back = from_checkpoint_keys(to_checkpoint_keys(state, config), config)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    # the release stores FP8 weights with one scale per 128x128 block
    weight = torch.randn(200, 130)
    scale = torch.tensor([[2.0, 0.5], [1.0, 4.0]])
    fp8 = {"lm_head.weight": weight.to(torch.float8_e4m3fn), "lm_head.weight_scale_inv": scale}
    out = from_checkpoint_keys(fp8, config)["lm_head.weight"]
    q = weight.to(torch.float8_e4m3fn).float()
    torch.testing.assert_close(out[:128, :128], q[:128, :128] * 2.0)
    torch.testing.assert_close(out[128:, 128:], q[128:, 128:] * 4.0)


def _f64_model(**overrides: object) -> DeepSeekV3ForCausalLM:
    torch.manual_seed(0)
    model = DeepSeekV3ForCausalLM(DeepSeekV3Config.tiny(initializer_range=0.1, **overrides)).double().eval()
    with torch.no_grad():
        for m in model.moe_layers():
            m.gate.e_score_correction_bias.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("q_lora_rank", [48, None])
def test_absorbed_equals_expanded(q_lora_rank: int | None) -> None:
    model = _f64_model(q_lora_rank=q_lora_rank, rope_interleave=q_lora_rank is None)
    ids = torch.randint(0, 256, (2, 17))
    with torch.no_grad():
        expanded = model(ids, mode="expanded").logits
        absorbed = model(ids, cache=model.new_cache(2), mode="absorbed").logits
    torch.testing.assert_close(absorbed, expanded, atol=1e-10, rtol=1e-10)


def test_cached_decoding_equals_full_forward() -> None:
    model = _f64_model()
    ids = torch.randint(0, 256, (2, 23))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(2, capacity=4)  # forces the buffers to grow
        steps = [model(ids[:, :9], cache=cache).logits]
        steps.append(model(ids[:, 9:12], cache=cache, mode="absorbed").logits)  # a chunk, absorbed
        steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(12, 23)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-10, rtol=1e-10)
    assert cache.length == 23
    values = model.config.kv_lora_rank + model.config.qk_rope_head_dim
    assert cache.bytes_per_token() == values * model.config.num_hidden_layers * 8


def test_cache_crop_rolls_back() -> None:
    model = _f64_model()
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        cache = model.new_cache(1)
        model(ids[:, :6], cache=cache)
        model(torch.randint(0, 256, (1, 3)), cache=cache)  # drafts to reject
        cache.crop(6)
        resumed = model(ids[:, 6:], cache=cache).logits
        full = model(ids).logits[:, 6:]
    torch.testing.assert_close(resumed, full, atol=1e-10, rtol=1e-10)


def test_config_presets_and_hf_dict() -> None:
    v3 = DeepSeekV3Config.v3_671b()
    assert (v3.hidden_size, v3.n_routed_experts, v3.num_experts_per_tok, v3.kv_lora_rank) == (
        7168,
        256,
        8,
        512,
    )
    assert v3.kv_cache_values_per_token() == 576 * 61
    lite = DeepSeekV3Config.v2_lite_16b()
    assert lite.q_lora_rank is None and lite.n_routed_experts == 64 and lite.scoring_func == "softmax"
    for config in (v3, lite, DeepSeekV3Config.tiny()):
        data = json.loads(json.dumps(config.to_hf_dict()))
        assert DeepSeekV3Config.from_hf_dict(data) == config
    with pytest.raises(ValueError):
        DeepSeekV3Config.tiny(n_group=3)
    with pytest.raises(ValueError):
        DeepSeekV3Config.tiny(num_experts_per_tok=7, n_group=4, topk_group=1)


def test_yarn_softmax_scale_matches_release() -> None:
    import math

    v3 = DeepSeekV3Config.v3_671b()
    mscale = 0.1 * math.log(40) + 1
    assert v3.softmax_scale == pytest.approx(192**-0.5 * mscale**2)
