"""`stagechat build-demo`: train the demo family (base, sft, dpo, draft, rm, rlhf) into the data dir."""

from __future__ import annotations

import argparse
from pathlib import Path

SIZES = ("full", "smoke")  # models.demo.build.SIZES, named here so `--help` does not import the builder


def add_parser(sub) -> None:
    build = sub.add_parser("build-demo", help="train the demo family (base, sft, dpo, draft, rm, rlhf)")
    build.add_argument("--size", choices=SIZES, default="full")
    build.add_argument("--out", default=None, help="output folder (default: DATA_DIR/demo)")
    build.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models.demo.build import build_demo
    from server.settings import Settings

    out = Path(args.out) if args.out else Settings.from_env().data_dir / "demo"
    timings = build_demo(out, size=args.size)
    print(f"[build-demo] {args.size} family in {out}: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    return 0
