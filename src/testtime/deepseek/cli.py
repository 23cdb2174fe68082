"""``testtime deepseek train|generate|bench-fp8``: DeepSeek-V3 on the shared trainer and the local decoder."""

from __future__ import annotations

from pathlib import Path

import typer

from testtime.errors import UserError

__all__ = ["register"]


def _load_for_generation(path: Path, tokenizer: str | None) -> tuple[object, object]:
    """A model and tokenizer from a trainer run/checkpoint folder or a transformers-format directory."""
    from testtime.deepseek.model import DeepSeekV3ForCausalLM

    if (path / "config.json").is_file():
        from testtime.train.tokenizer import ByteTokenizer, load_tokenizer

        model = DeepSeekV3ForCausalLM.from_pretrained(path)
        if tokenizer in (None, "byte") and not (path / "tokenizer.json").is_file():
            tok: object = ByteTokenizer()
        else:
            tok = load_tokenizer(tokenizer or path / "tokenizer.json")
        return model, tok
    from testtime.train.sample import load_trained

    model, tok, saved = load_trained(path)
    if not isinstance(model, DeepSeekV3ForCausalLM):
        raise UserError(f"{path} holds a {saved.get('model')!r} model, not deepseek-v3")
    return model, tok


def register(app: typer.Typer) -> None:
    """Add ``testtime deepseek ...`` to the CLI."""
    deepseek_app = typer.Typer(
        help="DeepSeek-V3 (arXiv 2412.19437): MLA, DeepSeekMoE with auxiliary-loss-free balancing, MTP.",
        no_args_is_help=True,
    )
    try:
        from testtime.train.cli import add_train_command
    except ModuleNotFoundError:  # the trainer is not installed
        pass
    else:
        add_train_command(
            deepseek_app,
            default_model="deepseek-v3",
            help_text=(
                "Train a DeepSeek-V3 language model (preset 'small' by default; --set "
                "model_config.bias_update_speed=0 turns the routing-bias update off)."
            ),
        )

    @deepseek_app.command("generate")
    def generate_command(
        path: Path = typer.Argument(
            ...,
            help="A `testtime deepseek train` run or checkpoint folder, or a transformers-format directory.",
        ),
        prompt: str = typer.Option("", "--prompt", "-p", help="Text to continue."),
        max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Tokens to generate."),
        temperature: float = typer.Option(0.0, help="Sampling temperature (0: greedy)."),
        top_k: int | None = typer.Option(None, help="Sample among the k most likely tokens."),
        speculative: bool = typer.Option(
            False,
            help="Greedy self-speculative decoding with the MTP module as drafter (same output as greedy).",
        ),
        tokenizer: str | None = typer.Option(
            None,
            help="For transformers-format directories without tokenizer.json: 'byte' or a tokenizer.json.",
        ),
        seed: int = typer.Option(0, help="Seed for sampling."),
        threads: int | None = typer.Option(
            None,
            help="CPU threads for torch (default: torch's; 1 is often faster for small models on busy machines).",
        ),
    ) -> None:
        """Continue a prompt with the latent KV cache (absorbed MLA) and report tokens/s."""
        import time

        import torch

        if threads is not None:
            if threads < 1:
                raise UserError("--threads must be at least 1")
            torch.set_num_threads(threads)

        from testtime.deepseek.generate import generate
        from testtime.deepseek.mtp import speculative_generate

        if not path.exists():
            raise UserError(f"{path} does not exist")
        if max_new_tokens < 1:
            raise UserError("--max-new-tokens must be at least 1")
        if speculative and temperature > 0:
            raise UserError("--speculative decodes greedily; drop --temperature")
        model, tok = _load_for_generation(path, tokenizer)
        ids = tok.encode(prompt) or [getattr(tok, "eot_id", 0)]  # type: ignore[attr-defined]
        vocab = model.config.vocab_size  # type: ignore[attr-defined]
        if max(ids) >= vocab:
            raise UserError(
                f"the tokenizer produces ids >= the model's vocabulary ({vocab}); pass --tokenizer"
            )
        input_ids = torch.tensor([ids])
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        if speculative:
            if not len(model.mtp):  # type: ignore[attr-defined]
                raise UserError("this model has no MTP module (num_nextn_predict_layers = 0)")
            out, stats = speculative_generate(model, input_ids, max_new_tokens=max_new_tokens)  # type: ignore[arg-type]
            note = (
                f", acceptance {stats.acceptance_rate:.0%}, {stats.tokens_per_step:.2f} tokens per main step"
            )
        else:
            out = generate(
                model,  # type: ignore[arg-type]
                input_ids,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                generator=generator,
            )
            note = ""
        seconds = time.perf_counter() - start
        new = out[0, len(ids) :].tolist()
        typer.echo(prompt + tok.decode(new))  # type: ignore[attr-defined]
        typer.secho(
            f"[{len(new)} tokens in {seconds:.2f} s, {len(new) / seconds:.1f} tokens/s{note}]", err=True
        )

    @deepseek_app.command("fp8-error")
    def fp8_error_command(
        k: int = typer.Option(4096, help="Reduction length of the GEMM."),
        m: int = typer.Option(256, help="Rows (tokens)."),
        n: int = typer.Option(256, help="Output features."),
    ) -> None:
        """Measure simulated FP8 (E4M3, tile/block scaling, promotion every 128) against BF16 on one GEMM."""
        from testtime.deepseek.fp8 import fp8_error_report

        if min(k, m, n) < 1:
            raise UserError("sizes must be positive")
        for name, value in fp8_error_report(m=m, k=k, n=n).items():
            typer.echo(f"{name:>26}: {value:.5f}")

    app.add_typer(deepseek_app, name="deepseek")
