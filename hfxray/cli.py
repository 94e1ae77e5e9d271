"""Shared command-line plumbing: errors end with one line and a non-zero exit."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("hfxray")


def fail(err: BaseException | str, code: int = 1) -> int:
    """Print a one-line reason to stderr (no traceback for expected errors) and return `code`."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    print(f"error: {message}", file=sys.stderr)
    return code
