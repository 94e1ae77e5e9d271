#!/usr/bin/env python
"""Push an existing saved model directory, with a freshly generated model card, to the Hugging Face Hub.

    huggingface-cli login            # or export HF_TOKEN=hf_...
    HF_HUB_OFFLINE=0 python scripts/push_to_hub.py MODEL_DIR --repo_id user/name [--private]

The card (README.md) is regenerated from MODEL_DIR/hfxray.json before the upload; temporary files
and Trainer checkpoints are not uploaded. HF_ENDPOINT selects another Hub endpoint (the tests use a
local stand-in). Research software, not a diagnostic device.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This folder holds scripts/evaluate.py, which would shadow the `evaluate` library: keep it off sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import logging
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hfxray import DISCLAIMER
from hfxray.cli import fail


@dataclass
class PushArguments:
    """Which directory goes to which Hub repository."""

    model_dir: str = field(
        metadata={"help": "Saved model directory (config.json, model.safetensors, hfxray.json)."}
    )
    repo_id: str = field(metadata={"help": "Target repository, 'user/name' or 'org/name'."})
    private: bool = field(
        default=False, metadata={"help": "Create the repository as private (new repos only)."}
    )
    token: str | None = field(
        default=None, metadata={"help": "Hub token (default: HF_TOKEN or the saved login)."}
    )
    commit_message: str = field(default="Upload hfxray model", metadata={"help": "Commit message."})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    argv = list(sys.argv[1:] if argv is None else argv)
    # MODEL_DIR may be given positionally, as the usage line shows.
    if argv and not argv[0].startswith("-"):
        argv = ["--model_dir", *argv]
    (args,) = HfArgumentParser(PushArguments).parse_args_into_dataclasses(args=argv)
    from hfxray.hub import push_model_dir

    try:
        url = push_model_dir(
            args.model_dir,
            args.repo_id,
            private=args.private,
            token=args.token,
            commit_message=args.commit_message,
        )
    except Exception as err:  # noqa: BLE001 - any Hub/network/IO failure ends with its one-line reason
        return fail(err)
    print(f"pushed {args.model_dir} to {args.repo_id}: {url}")
    print(DISCLAIMER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
