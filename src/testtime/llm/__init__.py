"""One LLM layer for everything that samples text: loading, backends, the server."""

from testtime.llm.loading import ModelNotFoundError, load_model, load_tokenizer, resolve_model

__all__ = ["ModelNotFoundError", "load_model", "load_tokenizer", "resolve_model"]
