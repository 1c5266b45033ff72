"""The ``llamafleet`` subcommands, one module each (see :mod:`llamafleet.cli`), and the argument types
they share."""

from __future__ import annotations

import argparse
import math


def seconds(text: str) -> float:
    """An argparse type: a finite, positive number of seconds (``nan``, ``inf``, 0 and negatives are
    refused by argparse, as a usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, got {text!r}")
    return value
