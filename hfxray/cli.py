"""Shared command-line plumbing: errors end with one line and a non-zero exit."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("hfxray")


def fail(err: BaseException | str, code: int = 1) -> int:
    """Print a one-line reason to stderr (no traceback for expected errors) and return `code`."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    print(f"error: {message}", file=sys.stderr)
    return code


def _str_to_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def dataclass_parser(*types: type, **kwargs: Any) -> argparse.ArgumentParser:
    """An ``argparse`` parser with one ``--field`` option per dataclass field (help, choices and
    defaults from the field metadata), as ``transformers.HfArgumentParser`` builds it.

    Why not HfArgumentParser itself: importing transformers costs about a second before a script
    can even print ``--help``, and the inference-only install has no transformers. Booleans take
    ``--flag`` or ``--flag true/false``, as with HfArgumentParser.
    """
    parser = argparse.ArgumentParser(**kwargs)
    for dtype in types:
        hints = typing.get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            kind = hints[f.name]
            args = typing.get_args(kind)
            if args and type(None) in args:  # X | None
                kind = next(a for a in args if a is not type(None))
            option: dict[str, Any] = {"help": f.metadata.get("help"), "dest": f.name}
            if f.default is not dataclasses.MISSING:
                option["default"] = f.default
            else:
                option["required"] = True
            if "choices" in f.metadata:
                option["choices"] = f.metadata["choices"]
            if kind is bool:
                option.update(type=_str_to_bool, nargs="?", const=True)
            else:
                option["type"] = kind
            parser.add_argument(f"--{f.name}", **option)
    return parser


def parse_into_dataclasses(
    parser: argparse.ArgumentParser, types: Sequence[type], argv: Sequence[str] | None = None
) -> tuple[Any, ...]:
    """(one instance per dataclass, a Namespace of the remaining arguments)."""
    namespace = parser.parse_args(argv)
    values = vars(namespace)
    out = []
    for dtype in types:
        names = [f.name for f in dataclasses.fields(dtype)]
        out.append(dtype(**{n: values.pop(n) for n in names}))
    return (*out, argparse.Namespace(**values))
