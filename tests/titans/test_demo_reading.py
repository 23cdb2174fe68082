"""The Titans demo's closing reading follows from the numbers it measured (it is not fixed text)."""

from __future__ import annotations

from testtime.titans.demo import STABILISED, reading


def test_reading_follows_the_numbers() -> None:
    lengths = [64, 256, 1024]
    fades = reading(lengths, {0.0: [1.0, 1.0, 0.94], 0.03: [1.0, 0.5, 0.12]})
    assert "stays about the same (1.00 at 64 tokens, 0.94 at 1024)" in fades
    assert "with alpha = 0.03 it falls from 1.00 at 64 tokens to 0.12 at 1024" in fades
    assert "forgetting costs 0.82" in fades and "fades" in fades
    same = reading(lengths, {0.0: [0.5, 0.4, 0.3], 0.003: [0.5, 0.4, 0.35]})
    assert "falls from 0.50" in same and "no visible difference" in same and "fades" not in same
    helps = reading(lengths, {0.0: [0.9, 0.5, 0.2], 0.03: [0.9, 0.7, 0.6]})
    assert "helps by 0.40" in helps


def test_the_stabilised_defaults_are_named() -> None:
    assert "RMS-normalised" in STABILISED and "1 / chunk size" in STABILISED
