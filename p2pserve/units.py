"""Credit units: the ledger and the wire count integer micro-credits; people read credits."""

from __future__ import annotations

__all__ = ["MICRO", "credits", "format_credits", "micro"]

MICRO = 1_000_000
"""Micro-credits per credit."""


def micro(amount: float) -> int:
    """``amount`` credits in micro-credits (rounded to the nearest)."""
    return round(amount * MICRO)


def credits(amount_micro: int) -> float:
    """``amount_micro`` micro-credits in credits."""
    return amount_micro / MICRO


def format_credits(amount_micro: int) -> str:
    """Credits with up to six decimals and no trailing zeros, e.g. ``"1,234.5"``."""
    return f"{amount_micro / MICRO:,.6f}".rstrip("0").rstrip(".")
