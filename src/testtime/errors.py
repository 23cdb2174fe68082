"""Errors that mean "the user asked for something wrong": the CLI prints them without a traceback."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """A bad value, a missing file or an impossible request from the user; the message says how to fix it."""
