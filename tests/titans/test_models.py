"""Titans models: streaming (token-by-token, uneven pieces) equals the parallel forward, in float64."""

from __future__ import annotations

import pytest
import torch

from testtime.titans.config import TitansConfig
from testtime.titans.models import TitansLM, TitansState

VARIANTS = ["lmm", "mac", "mag", "mal", "transformer"]


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _model(variant, **overrides):
    torch.manual_seed(0)
    model = TitansLM(TitansConfig.tiny(variant, **overrides)).eval()
    with torch.no_grad():  # data-dependent gates, so that the memory's gates are not constants
        for blk in model.blocks:
            if blk.memory is not None:
                blk.memory.to_gates.weight.normal_(std=0.3)
    return model


@pytest.mark.parametrize("variant", VARIANTS)
def test_token_by_token_equals_parallel(variant):
    model = _model(variant)
    ids = torch.randint(0, 64, (2, 19))
    with torch.no_grad():
        full = model(ids).logits
    with torch.inference_mode():
        state, outs = None, []
        for t in range(ids.shape[1]):
            logits, state = model.step(ids[:, t : t + 1], state)
            outs.append(logits)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variant", ["mac", "mag"])
def test_uneven_pieces_equal_parallel(variant):
    model = _model(variant)
    ids = torch.randint(0, 64, (1, 23))
    with torch.no_grad():
        full = model(ids).logits
        state, outs = None, []
        for a, b in [(0, 5), (5, 6), (6, 17), (17, 23)]:
            logits, state = model.step(ids[:, a:b], state)
            outs.append(logits)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-9, atol=1e-9)


def test_memory_changes_predictions():
    """The MAC memory is a real pathway: the logits after a segment depend on tokens the window no longer sees."""
    model = _model("mac")
    a = torch.randint(0, 64, (1, 24))
    b = a.clone()
    b[0, :4] = (b[0, :4] + 1) % 64  # differ only in the first segment
    with torch.no_grad():
        la, lb = model(a).logits, model(b).logits
    assert not torch.allclose(la[0, 16:], lb[0, 16:])  # the third segment sees the first only via memory
    model_t = _model("transformer")
    with torch.no_grad():
        ta, tb = model_t(a).logits, model_t(b).logits
    torch.testing.assert_close(ta[0, 20:], tb[0, 20:])  # the baseline's window (8) cannot see that far...
    # ...once the 2 persistent tokens and the window are past the change.


def test_state_save_load(tmp_path):
    model = _model("mac")
    ids = torch.randint(0, 64, (2, 14))
    with torch.no_grad():
        _, state = model.step(ids[:, :9])
        torch.save(state.tensors(), tmp_path / "s.pt")
        loaded = TitansState.from_tensors(torch.load(tmp_path / "s.pt"), num_blocks=len(model.blocks))
        a, _ = model.step(ids[:, 9:], state)
        b, _ = model.step(ids[:, 9:], loaded)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_batched_generation_has_a_state_per_sequence():
    model = _model("mag")
    prompts = torch.randint(0, 64, (2, 7))
    together, _ = model.generate(prompts, max_new_tokens=6)
    for i in range(2):
        alone, _ = model.generate(prompts[i : i + 1], max_new_tokens=6)
        torch.testing.assert_close(together[i : i + 1], alone)


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_and_backward(variant):
    model = _model(variant)
    ids = torch.randint(0, 64, (2, 12))
    labels = torch.roll(ids, -1, dims=1)
    labels[:, -1] = -100
    loss = model(ids, labels=labels).loss
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
    "flag", [{"depth": 1}, {"conv_kernel": 0}, {"momentum": False}, {"weight_decay": False}]
)
def test_table5_ablation_switches_run(flag):
    from testtime.titans.config import MemoryConfig

    memory = MemoryConfig(dim=32, num_heads=2, expansion=2.0, chunk_size=4, **{"depth": 2, **flag})
    model = _model("mac", memory=memory)
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        full = model(ids).logits
        state, outs = None, []
        for t in range(10):
            logits, state = model.step(ids[:, t : t + 1], state)
            outs.append(logits)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-9, atol=1e-9)


def test_mac_window_must_align_with_chunks():
    from testtime.titans.config import MemoryConfig

    with pytest.raises(
        ValueError, match="multiple of memory.chunk_size"
    ):  # the config says so, before a model
        TitansConfig.tiny("mac", window=6, memory=MemoryConfig.tiny(dim=32, chunk_size=4))
    TitansConfig.tiny("mag", window=6, memory=MemoryConfig.tiny(dim=32, chunk_size=4))  # no segments there


def test_memory_field_from_a_file_or_flag_is_checked():
    cfg = TitansConfig.tiny("mac", memory={"chunk_size": 8})  # a mapping, as a saved config.yaml holds it
    assert cfg.memory.chunk_size == 8 and cfg.memory.dim == cfg.dim
    with pytest.raises(ValueError, match="unknown memory field"):
        TitansConfig.tiny("mac", memory={"chunk_sz": 8})
    with pytest.raises(ValueError, match="memory must be a MemoryConfig"):
        TitansConfig.tiny("mac", memory=5)


def test_ablation_flags_set_the_fields():
    cfg = TitansConfig.tiny("mag", ablations=["linear_memory", "no_conv", "no_momentum", "no_persistent"])
    assert cfg.memory.depth == 1 and cfg.memory.conv_kernel == 0 and not cfg.memory.momentum
    assert cfg.memory.weight_decay and cfg.num_persistent == 0
    with pytest.raises(ValueError):
        TitansConfig.tiny("mag", ablations=["no_attention"])


@pytest.mark.parametrize("variant", ["mag", "transformer"])
def test_checkpoints_with_the_old_fused_attention_keys_load(variant):
    """Checkpoints written before the attention became testtime.nn's (fused qkv, baseline without `block`)."""
    torch.manual_seed(0)
    model = TitansLM(TitansConfig.tiny(variant=variant)).eval()
    old = {}
    for key, value in model.state_dict().items():
        key = key.replace(".block.attn_norm.", ".norm_mix.").replace(".block.mlp_norm.", ".norm_mlp.")
        key = key.replace(".block.", ".").replace(".attn.o_proj.", ".attn.out.")
        old[key] = value
    for index in range(len(model.blocks)):
        parts = [old.pop(f"blocks.{index}.attn.{p}_proj.weight") for p in "qkv"]
        old[f"blocks.{index}.attn.qkv.weight"] = torch.cat(parts)
    fresh = TitansLM(TitansConfig.tiny(variant=variant)).eval()
    fresh.load_state_dict(old)
    ids = torch.randint(0, 64, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, model(ids).logits, rtol=0, atol=0)
