"""Errors that mean "the user asked for something wrong": the CLI prints them without a traceback."""

from __future__ import annotations

__all__ = ["ModelNotFoundError", "UserError"]


class UserError(ValueError):
    """A bad value, a missing file or an impossible request from the user; the message says how to fix it."""


class ModelNotFoundError(FileNotFoundError):
    """A model name that resolves to nothing loadable; the message says how to get the model."""
