"""Tiny causal LMs built in memory for the RL tests."""

from __future__ import annotations

import pytest
import torch


def make_tiny_llama(
    *, seed: int = 0, vocab: int = 40, hidden: int = 32, layers: int = 2, dtype=torch.float64
):
    """A randomly initialised tiny Llama (untied head unless asked) in train mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    return model


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def make_llama():
    """The factory itself (tests pass seeds and dtypes)."""
    return make_tiny_llama


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread on a shared machine; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
