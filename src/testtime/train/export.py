"""Export a Transformer++ run as a transformers ``LlamaForCausalLM`` folder (``save_pretrained`` layout).

The baseline (:mod:`testtime.train.transformer`) is Llama's architecture: pre-norm RMSNorm blocks,
rotary embeddings rotating the two halves of each head (``rotate_half``, not interleaved pairs),
bias-free q/k/v/o projections with grouped-query attention, a SwiGLU MLP ``down(silu(gate(x)) * up(x))``,
a final RMSNorm and an (optionally tied) output head, with RMSNorm ``x / sqrt(mean(x^2) + eps) * weight``
computed in float32. The mapping is therefore a renaming of weights and configuration fields, and the
exported model gives the same logits (tested to float32 rounding). One case does not map: a model
trained with a sliding ``window`` (Llama has none), which :func:`export_llama` refuses.

The tokenizer travels too: a BPE run's ``tokenizer.json`` as it is, and the byte tokenizer as an
equivalent ``tokenizers`` file (a byte-level vocabulary of 256 tokens in byte order, no merges, and
``<|endoftext|>`` as id 256), both wrapped by ``PreTrainedTokenizerFast`` so that ``AutoTokenizer``
loads them and encodes text to the ids the model was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from testtime.errors import UserError

__all__ = [
    "check_out_dir",
    "export_llama",
    "export_tokenizer",
    "llama_config",
    "llama_state_dict",
    "prepare_out_dir",
]


def check_out_dir(out: str | Path, *, overwrite: bool) -> Path:
    """``out`` as a Path, if it can be written: absent, an empty folder, or ``overwrite``; nothing is created."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"{out} is not empty: pass --overwrite to replace its files, or choose another folder"
        )
    return out


def prepare_out_dir(out: str | Path, *, overwrite: bool) -> Path:
    """The export folder, created; an existing non-empty folder needs ``overwrite``."""
    out = check_out_dir(out, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    return out


def llama_config(config: Any, *, vocab_size: int, eot_id: int) -> Any:
    """A ``LlamaConfig`` for a :class:`~testtime.train.transformer.TransformerConfig`."""
    from transformers import LlamaConfig

    from testtime.nn import swiglu_hidden_dim

    if config.window is not None:
        raise UserError(
            f"this model attends through a sliding window of {config.window} tokens, which LlamaForCausalLM "
            "cannot express; only full-attention Transformer++ runs export"
        )
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.dim,
        intermediate_size=config.mlp_hidden_dim or swiglu_hidden_dim(config.dim),
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads or config.num_heads,
        head_dim=config.dim // config.num_heads,
        hidden_act="silu",
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
        torch_dtype="float32",
    )


def llama_state_dict(weights: dict[str, Any], *, num_layers: int, tied: bool) -> dict[str, Any]:
    """Our parameter names -> transformers Llama names (the tensors themselves are unchanged)."""
    names = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    if not tied:
        names["lm_head.weight"] = "lm_head.weight"
    per_layer = {
        "attn_norm.weight": "input_layernorm.weight",
        "mlp_norm.weight": "post_attention_layernorm.weight",
        "attn.q_proj.weight": "self_attn.q_proj.weight",
        "attn.k_proj.weight": "self_attn.k_proj.weight",
        "attn.v_proj.weight": "self_attn.v_proj.weight",
        "attn.o_proj.weight": "self_attn.o_proj.weight",
        "mlp.gate_proj.weight": "mlp.gate_proj.weight",
        "mlp.up_proj.weight": "mlp.up_proj.weight",
        "mlp.down_proj.weight": "mlp.down_proj.weight",
    }
    for i in range(num_layers):
        names |= {f"layers.{i}.{ours}": f"model.layers.{i}.{theirs}" for ours, theirs in per_layer.items()}
    leftover = sorted(set(weights) - set(names) - ({"lm_head.weight"} if tied else set()))
    if leftover:
        raise UserError(f"cannot map these weights onto Llama: {leftover[:5]}")
    return {theirs: weights[ours].contiguous() for ours, theirs in names.items()}


def export_tokenizer(tokenizer: Any, out: Path, *, model_max_length: int) -> None:
    """Save ``tokenizer`` (ours) as a transformers ``PreTrainedTokenizerFast`` in ``out``."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from testtime.train.tokenizer import EOT, _byte_level_alphabet

    if getattr(tokenizer, "kind", None) == "byte":
        alphabet = _byte_level_alphabet()  # printable character -> byte
        vocab = {ch: byte for ch, byte in alphabet.items()}
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens([EOT])
        assert hf.token_to_id(EOT) == tokenizer.eot_id == 256
    else:
        hf = tokenizer._tok
    fast = PreTrainedTokenizerFast(
        tokenizer_object=hf, eos_token=EOT, bos_token=EOT, pad_token=EOT, model_max_length=model_max_length
    )
    fast.save_pretrained(str(out))


def export_llama(run: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the run's latest checkpoint to ``out`` as ``LlamaForCausalLM`` + tokenizer.

    Args:
        run: a run folder or checkpoint folder of a ``transformer`` model.
        out: the folder to write.
        overwrite: replace the files of a non-empty ``out``.

    Returns:
        ``out``.
    """
    from testtime.train.sample import peek_model_name

    name = peek_model_name(run)
    if name != "transformer":
        hint = " (use `testtime deepseek export`)" if name.startswith("deepseek") else ""
        raise UserError(f"{run} holds a {name!r} model; `lm export` writes Transformer++ runs{hint}")
    check_out_dir(out, overwrite=overwrite)  # before the slow imports and the model

    from transformers import LlamaForCausalLM

    from testtime.train.checkpoint import load_weights
    from testtime.train.sample import load_trained, resolve_checkpoint

    model, tok, saved = load_trained(run)
    hf_config = llama_config(model.config, vocab_size=tok.vocab_size, eot_id=tok.eot_id)
    out = prepare_out_dir(out, overwrite=overwrite)
    weights = load_weights(resolve_checkpoint(run))
    state = llama_state_dict(weights, num_layers=model.config.num_layers, tied=model.config.tie_embeddings)
    hf = LlamaForCausalLM(hf_config)
    result = hf.load_state_dict(state, strict=False)
    missing = [
        k for k in result.missing_keys if not (hf_config.tie_word_embeddings and k == "lm_head.weight")
    ]
    if missing or result.unexpected_keys:
        raise UserError(f"export left weights unset: {missing[:5]} / unexpected {result.unexpected_keys[:5]}")
    if hf_config.tie_word_embeddings:
        hf.tie_weights()
    hf.generation_config.pad_token_id = tok.eot_id
    hf.save_pretrained(str(out))
    export_tokenizer(tok, out, model_max_length=int(saved.get("seq_len", model.config.max_seq_len)))
    return out
