"""``testtime deepseek train|eval|generate|export|fp8-error``: DeepSeek-V3 on the shared trainer and the local decoder.

Runs go to ``runs/deepseek`` by default; flags follow the shared vocabulary (docs/cli.md).
"""

from __future__ import annotations

from pathlib import Path

import typer

from testtime import cli_options as opt
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
    from testtime.train.cli import add_eval_command, add_train_command

    add_train_command(
        deepseek_app,
        default_model="deepseek-v3",
        default_out="runs/deepseek",
        help_text=(
            "Train a DeepSeek-V3 language model (preset 'small' by default; --set "
            "model_config.bias_update_speed=0 turns the routing-bias update off)."
        ),
    )
    add_eval_command(
        deepseek_app,
        families=("deepseek",),
        help_text="Validation bits per byte of a trained DeepSeek-V3 run (held-out documents of the corpus).",
    )

    @deepseek_app.command("generate")
    def generate_command(
        path: Path = typer.Argument(
            ...,
            help="A `testtime deepseek train` run or checkpoint folder, or a transformers-format directory.",
        ),
        prompt: str = typer.Option("", "--prompt", help="Text to continue."),
        max_new_tokens: int = opt.max_new_tokens_option(),
        num_samples: int = opt.num_samples_option(),
        temperature: float = opt.temperature_option(),
        top_p: float = opt.top_p_option(),
        top_k: int = opt.top_k_option(),
        speculative: bool = typer.Option(
            False,
            help="Greedy self-speculative decoding with the MTP module as drafter (same output as greedy).",
        ),
        tokenizer: str | None = typer.Option(
            None,
            help="For transformers-format directories without tokenizer.json: 'byte' or a tokenizer.json.",
        ),
        seed: int = opt.seed_option(),
        threads: int | None = opt.threads_option(None),
        device: str = opt.device_option("cpu"),
    ) -> None:
        """Continue a prompt with the latent KV cache (absorbed MLA) and report tokens/s."""
        import time

        import torch

        if threads is not None:
            torch.set_num_threads(threads)

        from testtime.deepseek.generate import generate
        from testtime.deepseek.mtp import speculative_generate

        if not path.exists():
            raise UserError(f"{path} does not exist")
        if speculative and temperature > 0:
            raise UserError("--speculative decodes greedily; drop --temperature")
        if tokenizer not in (None, "byte") and not Path(tokenizer).is_file():
            raise UserError(f"--tokenizer must be 'byte' or a tokenizer.json file; {tokenizer} is neither")
        model, tok = _load_for_generation(path, tokenizer)
        model = model.to(device)  # type: ignore[attr-defined]
        ids = tok.encode(prompt) or [getattr(tok, "eot_id", 0)]  # type: ignore[attr-defined]
        vocab = model.config.vocab_size  # type: ignore[attr-defined]
        if max(ids) >= vocab:
            raise UserError(
                f"the tokenizer produces ids >= the model's vocabulary ({vocab}); pass --tokenizer"
            )
        input_ids = torch.tensor([ids], device=device)
        generator = torch.Generator(device=device).manual_seed(seed)
        for index in range(num_samples):
            start = time.perf_counter()
            if speculative:
                if not len(model.mtp):  # type: ignore[attr-defined]
                    raise UserError("this model has no MTP module (num_nextn_predict_layers = 0)")
                out, stats = speculative_generate(model, input_ids, max_new_tokens=max_new_tokens)  # type: ignore[arg-type]
                note = f", acceptance {stats.acceptance_rate:.0%}, {stats.tokens_per_step:.2f} tokens per main step"
            else:
                out = generate(
                    model,  # type: ignore[arg-type]
                    input_ids,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_k=top_k or None,
                    top_p=top_p,
                    generator=generator,
                )
                note = ""
            seconds = time.perf_counter() - start
            new = out[0, len(ids) :].tolist()
            if num_samples > 1:
                typer.echo(f"--- sample {index + 1} ---")
            typer.echo(prompt + tok.decode(new))  # type: ignore[attr-defined]
            typer.secho(
                f"[{len(new)} tokens in {seconds:.2f} s, {len(new) / seconds:.1f} tokens/s{note}]", err=True
            )

    @deepseek_app.command("export")
    def export_command(
        run: Path = typer.Argument(..., help="A `deepseek train` run folder or checkpoint folder."),
        out: Path = typer.Argument(..., help="Folder to write (transformers DeepseekV3ForCausalLM layout)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the files of an existing folder."),
    ) -> None:
        """Write a run as a transformers DeepseekV3ForCausalLM folder (for `llm generate`, `serve`)."""
        from testtime.deepseek.export import export_deepseek

        written = export_deepseek(run, out, overwrite=overwrite)
        typer.echo(
            f"wrote {written} (DeepseekV3ForCausalLM); try: testtime llm generate --model {written} --raw 'ab'"
        )

    @deepseek_app.command("fp8-error")
    def fp8_error_command(
        k: int = typer.Option(4096, min=1, max=1 << 16, help="Reduction length of the GEMM."),
        m: int = typer.Option(256, min=1, max=1 << 14, help="Rows (tokens)."),
        n: int = typer.Option(256, min=1, max=1 << 14, help="Output features."),
        seed: int = opt.seed_option(),
    ) -> None:
        """Simulated FP8 (E4M3, tile/block scaling, promotion every 128) against BF16 on one GEMM."""
        from testtime.deepseek.fp8 import fp8_error_report

        report = fp8_error_report(m=m, k=k, n=n, seed=seed)
        typer.echo(
            f"relative Frobenius error of one ({m} x {k}) @ ({k} x {n}) GEMM with 8 outlier activation "
            f"channels (x1000), seed {seed}"
        )
        typer.echo("")
        typer.echo("| computation | reference | relative error | what it shows |")
        typer.echo("|---|---|---:|---|")
        for key in _FP8_ROWS:
            label, reference, meaning = _FP8_ROWS[key]
            typer.echo(f"| {label} | {reference} | {report[key]:.2e} | {meaning} |")
        typer.echo("")
        typer.echo(
            "DeepSeek-V3 (sec. 3.3.2) reports that the recipe keeps the training-loss error below 0.25% relative "
            "to BF16, and that limited-precision Tensor Core accumulation alone costs up to ~2% at K = 4096."
        )

    app.add_typer(deepseek_app, name="deepseek")


# report key -> (row label, reference, what it shows)
_FP8_ROWS = {
    "bf16": ("BF16 inputs, exact accumulation", "float64 GEMM", "the baseline precision"),
    "fp8_tile": (
        "FP8, 1x128 tiles / 128x128 blocks, promoted every 128",
        "float64 GEMM",
        "the paper's recipe",
    ),
    "fp8_per_tensor": ("FP8, one scale per tensor", "float64 GEMM", "why fine-grained scaling: outliers"),
    "fp8_no_promotion": ("FP8 tiles, accumulation never promoted", "float64 GEMM", "why promotion"),
    "accumulation_promoted": (
        "accumulation error, promoted every 128",
        "same FP8 GEMM, exact sums",
        "what the limited accumulator adds with promotion",
    ),
    "accumulation_no_promotion": (
        "accumulation error, no promotion",
        "same FP8 GEMM, exact sums",
        "what it adds without",
    ),
}
