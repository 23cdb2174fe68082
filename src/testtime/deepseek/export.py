"""Export a ``deepseek train`` run as a transformers ``DeepseekV3ForCausalLM`` folder.

The model already writes the transformers / official layout (:meth:`DeepSeekV3ForCausalLM.save_pretrained`,
key mapping in :mod:`testtime.deepseek.convert`, read-only here): ``config.json`` with ``model_type``
``deepseek_v3`` and per-expert weights, the MTP modules as extra layers that transformers ignores. This
module adds what a folder needs to travel: the tokenizer as a ``PreTrainedTokenizerFast`` (the byte
tokenizer becomes an equivalent ``tokenizers`` file, see :mod:`testtime.train.export`) and a generation
config whose end and padding token is ``<|endoftext|>``.
"""

from __future__ import annotations

import json
from pathlib import Path

from testtime.errors import UserError

__all__ = ["export_deepseek"]


def export_deepseek(run: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the run's latest checkpoint to ``out`` in transformers' DeepSeek-V3 format, with its tokenizer.

    Args:
        run: a run or checkpoint folder of a ``deepseek-v3`` model.
        out: the folder to write.
        overwrite: replace the files of a non-empty ``out``.

    Returns:
        ``out``.
    """
    from testtime.train.export import check_out_dir, export_tokenizer, prepare_out_dir
    from testtime.train.sample import load_trained, peek_model_name

    name = peek_model_name(run)
    if not name.startswith("deepseek"):
        hint = " (use `testtime lm export`)" if name == "transformer" else ""
        raise UserError(f"{run} holds a {name!r} model; `deepseek export` writes DeepSeek-V3 runs{hint}")
    check_out_dir(out, overwrite=overwrite)  # before the model loads

    from testtime.deepseek.model import DeepSeekV3ForCausalLM

    model, tok, saved = load_trained(run)
    assert isinstance(model, DeepSeekV3ForCausalLM)
    if model.config.vocab_size != tok.vocab_size:
        raise UserError(
            f"model vocabulary {model.config.vocab_size} != tokenizer vocabulary {tok.vocab_size}"
        )
    out = prepare_out_dir(out, overwrite=overwrite)
    model.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config.update(bos_token_id=tok.eot_id, eos_token_id=tok.eot_id, pad_token_id=tok.eot_id)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id, "pad_token_id": tok.eot_id}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    export_tokenizer(tok, out, model_max_length=int(saved.get("seq_len", 4096)))
    return out
