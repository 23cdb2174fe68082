"""The DeepSeek-V3 language model: embedding, first-k dense + MoE decoder layers with MLA, final norm, head,
and D multi-token-prediction modules (Section 2.2) that share the embedding and the head.

``DeepSeekV3ForCausalLM.from_pretrained(path)`` reads a directory as transformers'
``DeepseekV3ForCausalLM.save_pretrained`` (or the official release) writes it; ``save_pretrained`` writes
the same format, MTP layers included as layer ``num_hidden_layers + k`` (see :mod:`testtime.deepseek.convert`).

Shape legend: ``b`` batch, ``s`` positions, ``D`` model width, ``V`` vocabulary.

Deviations: no padding mask (sequences of a batch are equally long); the loss ignores label -100 and is
the mean over predicted tokens, as transformers computes it. The same holds for each MTP depth's L^k
(eq. 24): the paper writes ``-1/T sum_{i=2+k}^{T+1} log P^k_i[t_i]``, dividing by T although depth k predicts
only T - k tokens (fewer with ignored labels); we divide by the number of predicted tokens, so every depth's
L^k is a mean cross-entropy on the scale of the main loss (the two differ by the factor (T - k) / T).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from testtime.deepseek.block import DecoderLayer, cross_entropy
from testtime.deepseek.config import DeepSeekV3Config
from testtime.deepseek.layers import RMSNorm, norm, rotary_embedding
from testtime.deepseek.mla import AttentionMode, MLACache
from testtime.deepseek.moe import MoE
from testtime.deepseek.mtp import MTPModule, mtp_losses

__all__ = ["CausalLMOutput", "DecoderLayer", "DeepSeekV3ForCausalLM", "DeepSeekV3Model", "MTPModule"]

log = logging.getLogger(__name__)


@dataclass
class CausalLMOutput:
    """What :meth:`DeepSeekV3ForCausalLM.forward` returns.

    Attributes:
        logits: ``(b, s, V)`` next-token logits of the main model.
        hidden_states: ``(b, s, D)`` the main model's normalised output (h^0, the MTP modules' input).
        loss: lm_loss + mtp_loss_weight * mtp_loss + aux_loss when labels were given.
        lm_loss: the main next-token cross-entropy.
        mtp_loss: mean over depths of the MTP cross-entropies (eq. 25 without lambda).
        mtp_losses: the per-depth cross-entropies L^k_MTP (eq. 24).
        aux_loss: sum over MoE layers of the alpha-weighted balance losses.
        metrics: detached scalars for logging (the losses and the main stack's mean MaxVio of the batch).
    """

    logits: torch.Tensor
    hidden_states: torch.Tensor
    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    mtp_loss: torch.Tensor | None = None
    mtp_losses: list[torch.Tensor] = field(default_factory=list)
    aux_loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class DeepSeekV3Model(nn.Module):
    """Embedding, decoder stack and final norm (transformers' ``model.*`` keys).

    Args:
        config: the model config.
    """

    def __init__(self, config: DeepSeekV3Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = norm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary = rotary_embedding(
            config.qk_rope_head_dim, theta=config.rope_theta, rope_scaling=config.rope_scaling
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cache: MLACache | None = None,
        mode: AttentionMode | None = None,
    ) -> torch.Tensor:
        """``(b, s)`` token ids -> ``(b, s, D)`` normalised hidden states; appends to ``cache`` if given."""
        start = cache.length if cache is not None else 0
        x = self.embed_tokens(input_ids)
        positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
        cos, sin = self.rotary(positions, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache=cache, cache_layer=i, mode=mode)
        if cache is not None:
            cache.advance(input_ids.shape[1])
        return self.norm(x)


class DeepSeekV3ForCausalLM(nn.Module):
    """DeepSeek-V3 with its output head and MTP modules.

    ``forward(input_ids, labels=None)`` returns a :class:`CausalLMOutput` (``.logits``; ``.loss`` with labels).
    ``mtp_loss_weight`` (lambda) is an attribute so that a schedule can change it during training.

    Args:
        config: the model config.
    """

    def __init__(self, config: DeepSeekV3Config) -> None:
        super().__init__()
        self.config = config
        self.model = DeepSeekV3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.mtp = nn.ModuleList(
            MTPModule(config, config.num_hidden_layers + k) for k in range(config.num_nextn_predict_layers)
        )
        self.mtp_loss_weight = config.mtp_loss_weight
        self.reset_parameters()

    # ---- construction ------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, *, seed: int | None = None) -> None:
        """Normal(0, initializer_range) weights, unit norms, zero biases and routing biases."""
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                module.weight.normal_(0.0, std, generator=generator)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, MoE):
                module.gate.weight.normal_(0.0, std, generator=generator)
                module.gate.e_score_correction_bias.zero_()
                module.experts.gate_up_proj.normal_(0.0, std, generator=generator)
                module.experts.down_proj.normal_(0.0, std, generator=generator)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, dtype: torch.dtype | None = None, **config_overrides: object
    ) -> DeepSeekV3ForCausalLM:
        """Load a directory with ``config.json`` and safetensors (transformers' or the official layout).

        Args:
            path: the directory.
            dtype: cast the floating weights (the router stays float32); None keeps float32.
            **config_overrides: config fields to change (e.g. ``num_nextn_predict_layers=0``).

        Returns:
            The model in eval mode. MTP modules missing from the checkpoint keep their random initialisation
            (transformers does not save them) and a warning is logged.
        """
        from testtime.deepseek.convert import load_state_dict

        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{path} has no config.json")
        config = DeepSeekV3Config.from_hf_dict(json.loads(config_file.read_text()), **config_overrides)
        model = cls(config)
        state = load_state_dict(path, config)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing_mtp = [k for k in missing if k.startswith("mtp.")]
        other_missing = [
            k for k in missing if not k.startswith("mtp.") and not k.endswith("e_score_correction_bias")
        ]
        if config.tie_word_embeddings and "lm_head.weight" in other_missing:
            other_missing.remove("lm_head.weight")
        if other_missing or unexpected:
            raise ValueError(
                f"checkpoint does not match the config: missing {other_missing}, unexpected {unexpected}"
            )
        if missing_mtp:
            log.warning(
                "%s has no MTP weights: the %d MTP module(s) are randomly initialised", path, len(model.mtp)
            )
        if dtype is not None:
            model.to(dtype)
            for module in model.modules():
                if isinstance(module, MoE):
                    module.gate.float()
        return model.eval()

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` in the transformers / official layout.

        Returns:
            ``path``.
        """
        from testtime.deepseek.convert import save_state_dict

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config.to_hf_dict(), indent=2) + "\n")
        save_state_dict(self, path)
        return path

    # ---- forward -----------------------------------------------------------------------------------
    def moe_layers(self) -> list[MoE]:
        """Every MoE FFN, main stack first, then the MTP modules'."""
        return [m for m in self.modules() if isinstance(m, MoE)]

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        cache: MLACache | None = None,
        mode: AttentionMode | None = None,
        shift_labels: bool = True,
    ) -> CausalLMOutput:
        """Logits, and with ``labels`` the training loss (main + lambda * MTP + balance).

        Args:
            input_ids: ``(b, s)`` token ids.
            labels: ``(b, s)`` targets, -100 ignored; or None.
            cache: latent cache to extend (decoding); None for a full forward.
            mode: force the "expanded" or "absorbed" MLA path.
            shift_labels: ``labels`` are aligned with ``input_ids`` and shifted here (transformers'
                convention); False: ``labels[:, i]`` is already the token after position i (the trainer's).

        Returns:
            A :class:`CausalLMOutput`.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        for moe in self.moe_layers():  # only the layers that run in this forward contribute a balance loss
            moe.aux_loss = None
        hidden = self.model(input_ids, cache=cache, mode=mode)
        logits = self.lm_head(hidden)
        out = CausalLMOutput(logits=logits, hidden_states=hidden)
        if labels is None:
            return out
        targets = labels[:, 1:] if shift_labels else labels  # targets[:, i]: the token after position i
        out.lm_loss = cross_entropy(logits[:, : targets.shape[1]], targets)
        loss = out.lm_loss
        out.metrics["lm_loss"] = out.lm_loss.detach()
        if len(self.mtp) and self.mtp_loss_weight > 0:
            out.mtp_losses = self.mtp_losses(hidden, input_ids, targets)
            if out.mtp_losses:
                out.mtp_loss = torch.stack(out.mtp_losses).mean()
                loss = loss + self.mtp_loss_weight * out.mtp_loss
                out.metrics["mtp_loss"] = out.mtp_loss.detach()
        aux = [m.aux_loss for m in self.moe_layers() if m.aux_loss is not None]
        if aux:
            out.aux_loss = torch.stack(aux).sum()
            loss = loss + out.aux_loss
            out.metrics["aux_loss"] = out.aux_loss.detach()
        main_moe = [m for m in self.model.modules() if isinstance(m, MoE)]
        if main_moe:
            loads = torch.stack([m.last_load for m in main_moe])
            vio = loads.amax(-1) / loads.mean(-1).clamp_min(1e-12) - 1
            out.metrics["maxvio_batch"] = vio.mean()
        out.loss = loss
        return out

    def mtp_losses(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, targets: torch.Tensor
    ) -> list[torch.Tensor]:
        """Per-depth MTP cross-entropies L^k (eqs. 21-24); see :func:`testtime.deepseek.mtp.mtp_losses`."""
        return mtp_losses(
            self.mtp, hidden, input_ids, targets, embed=self.model.embed_tokens, rotary=self.model.rotary,
            head=self.lm_head,
        )  # fmt: skip

    def new_cache(self, batch_size: int, *, mtp: bool = False, capacity: int = 256) -> MLACache:
        """An empty latent cache for the main stack (or, with ``mtp``, for the MTP modules)."""
        param = self.lm_head.weight
        return MLACache(
            len(self.mtp) if mtp else self.config.num_hidden_layers,
            batch_size,
            self.config.kv_lora_rank + self.config.qk_rope_head_dim,
            dtype=param.dtype,
            device=param.device,
            capacity=capacity,
        )
