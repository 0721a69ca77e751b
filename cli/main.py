"""The `stagechat` command: serve, build-demo, eval, feedback export, rlhf-round, reward-model, backup/restore.

Each subcommand is a module of this package that adds its parser and runs; nothing runs at import time,
and `--help` imports no torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cli import backup, build_demo, feedback, reward_model, rlhf_round, serve
from cli import eval as eval_  # the module, not the builtin

COMMANDS = (serve, build_demo, eval_, feedback, rlhf_round, reward_model, backup)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stagechat", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # Logs go to stderr, vLLM's included, so stdout carries only results (`eval --json`, exports).
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
