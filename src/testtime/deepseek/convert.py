"""Checkpoint keys: our modules <-> transformers' / the official DeepSeek-V3 safetensors layout.

Our state dict uses transformers' in-memory names, with two differences that this module translates:

* routed experts are stacked tensors ``mlp.experts.gate_up_proj (E, 2I, D)`` and ``mlp.experts.down_proj
  (E, D, I)``; on disk (transformers' ``save_pretrained`` and the release) every expert has its own
  ``mlp.experts.{e}.{gate,up,down}_proj.weight``;
* MTP module k lives under ``mtp.{k-1}.*``; on disk it is layer ``model.layers.{num_hidden_layers + k - 1}.*``
  with, besides the decoder-layer keys, ``enorm``, ``hnorm``, ``eh_proj``, ``shared_head.norm`` and copies
  of the shared ``embed_tokens`` and ``shared_head.head`` (README_WEIGHTS.md of the release).

Reading also accepts stacked experts (transformers' in-memory names), sharded checkpoints
(``model.safetensors.index.json``) and the release's FP8 weights (``weight_scale_inv``: one float32 scale per
128x128 block, dequantised on load). Layers beyond the configured MTP depth are ignored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from testtime.deepseek.config import DeepSeekV3Config

if TYPE_CHECKING:
    from testtime.deepseek.model import DeepSeekV3ForCausalLM

__all__ = ["from_checkpoint_keys", "load_state_dict", "save_state_dict", "to_checkpoint_keys"]

_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")
_FP8_BLOCK = 128


def to_checkpoint_keys(state: dict[str, torch.Tensor], config: DeepSeekV3Config) -> dict[str, torch.Tensor]:
    """Our state dict -> the on-disk layout (per-expert keys, MTP as extra layers with shared copies).

    Args:
        state: ``model.state_dict()``.
        config: the model config.

    Returns:
        A new dict of contiguous tensors (no storage shared, as safetensors requires).
    """
    out: dict[str, torch.Tensor] = {}
    inter = config.moe_intermediate_size
    for key, value in state.items():
        if key.startswith("mtp."):
            index, rest = key[len("mtp.") :].split(".", 1)
            key = f"model.layers.{config.num_hidden_layers + int(index)}.{rest}"
        if key.endswith("mlp.experts.gate_up_proj"):
            prefix = key[: -len(".gate_up_proj")]
            for e in range(value.shape[0]):
                out[f"{prefix}.{e}.gate_proj.weight"] = value[e, :inter].clone()
                out[f"{prefix}.{e}.up_proj.weight"] = value[e, inter:].clone()
        elif key.endswith("mlp.experts.down_proj"):
            prefix = key[: -len(".down_proj")]
            for e in range(value.shape[0]):
                out[f"{prefix}.{e}.down_proj.weight"] = value[e].clone()
        else:
            out[key] = value.detach().clone().contiguous()
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    for k in range(config.num_nextn_predict_layers):
        layer = config.num_hidden_layers + k
        out[f"model.layers.{layer}.embed_tokens.weight"] = state["model.embed_tokens.weight"].detach().clone()
        out[f"model.layers.{layer}.shared_head.head.weight"] = state["lm_head.weight"].detach().clone()
    return out


def _dequantize_fp8(weight: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """Release FP8 weight ``(m, n)`` times its per-128x128-block scale ``(ceil(m/128), ceil(n/128))``."""
    scale = scale_inv.repeat_interleave(_FP8_BLOCK, 0).repeat_interleave(_FP8_BLOCK, 1)
    return weight.float() * scale[: weight.shape[0], : weight.shape[1]]


def from_checkpoint_keys(state: dict[str, torch.Tensor], config: DeepSeekV3Config) -> dict[str, torch.Tensor]:
    """The on-disk layout -> our state dict (stack experts, rename MTP layers, drop shared copies).

    Args:
        state: tensors read from the checkpoint.
        config: the model config.

    Returns:
        A dict for ``DeepSeekV3ForCausalLM.load_state_dict``.
    """
    scales = {k[: -len("_scale_inv")]: v for k, v in state.items() if k.endswith("weight_scale_inv")}
    last_layer = config.num_hidden_layers + config.num_nextn_predict_layers
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("weight_scale_inv") or "rotary_emb" in key:
            continue
        if key in scales:
            value = _dequantize_fp8(value, scales[key])
        layer_match = _LAYER.match(key)
        if layer_match is not None:
            layer, rest = int(layer_match.group(1)), layer_match.group(2)
            if layer >= last_layer:
                continue
            if layer >= config.num_hidden_layers:
                if rest in ("embed_tokens.weight", "shared_head.head.weight"):
                    continue  # copies of the shared embedding and head
                key = f"mtp.{layer - config.num_hidden_layers}.{rest}"
        expert_match = _EXPERT.match(key)
        if expert_match is not None:
            prefix, e, name = expert_match.group(1), int(expert_match.group(2)), expert_match.group(3)
            experts.setdefault(prefix, {}).setdefault(e, {})[name] = value
            continue
        out[key] = value
    for prefix, by_expert in experts.items():
        if sorted(by_expert) != list(range(config.n_routed_experts)):
            raise ValueError(
                f"{prefix}: expected experts 0..{config.n_routed_experts - 1}, found {sorted(by_expert)}"
            )
        ordered = [by_expert[e] for e in range(config.n_routed_experts)]
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat((w["gate_proj"], w["up_proj"])) for w in ordered]
        )
        out[f"{prefix}.down_proj"] = torch.stack([w["down_proj"] for w in ordered])
    return out


def load_state_dict(path: str | Path, config: DeepSeekV3Config) -> dict[str, torch.Tensor]:
    """Read every safetensors file of a checkpoint directory and convert it with :func:`from_checkpoint_keys`.

    Args:
        path: directory with ``model.safetensors`` or ``model.safetensors.index.json`` (+ shards).
        config: the model config.

    Returns:
        Our state dict.
    """
    from safetensors.torch import load_file

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no safetensors files in {path}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(path / name))
    return from_checkpoint_keys(state, config)


def save_state_dict(model: DeepSeekV3ForCausalLM, path: str | Path) -> Path:
    """Write ``model.safetensors`` in the on-disk layout.

    Returns:
        The file written.
    """
    from safetensors.torch import save_file

    state = {k: v for k, v in model.state_dict().items()}
    target = Path(path) / "model.safetensors"
    save_file(to_checkpoint_keys(state, model.config), target, metadata={"format": "pt"})
    return target
