"""`stagechat build-demo`: train the demo family (base, sft, dpo, draft, rm, rlhf) into the data dir, and
with `--ship` evaluate it and make it the family the repository ships (`models/demo/family/`)."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from cli.common import DEFAULT_CONFIG, fail

SIZES = ("full", "smoke")  # models.demo.build.SIZES, named here so `--help` does not import the builder


def add_parser(sub) -> None:
    build = sub.add_parser("build-demo", help="train the demo family (base, sft, dpo, draft, rm, rlhf)")
    build.add_argument("--size", choices=SIZES, default="full")
    build.add_argument("--out", default=None, help="output folder (default: DATA_DIR/demo)")
    build.add_argument(
        "--rebuild",
        action="store_true",
        help="train every step from scratch (default: resume, keeping the steps already built)",
    )
    build.add_argument(
        "--ship",
        action="store_true",
        help="then evaluate the full build (test split and the quick check) and copy it, with its "
        "manifest, into models/demo/family/: do this only when the recipe changed",
    )
    build.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models.demo.build import STEPS, build_demo, default_out_dir

    if args.ship and args.size != "full":
        return fail("build-demo", "--ship ships a full build only")
    out = Path(args.out) if args.out else default_out_dir()
    if args.rebuild:
        for step in STEPS:
            shutil.rmtree(out / step, ignore_errors=True)
    timings = build_demo(out, size=args.size)
    print(f"[build-demo] {args.size} family in {out}: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    return ship(out) if args.ship else 0


def ship(built: Path) -> int:
    from cli.eval import as_payload
    from models.demo import manifest
    from models.eval import evaluate
    from models.rm_eval import registry_comparisons
    from server.settings import SHIPPED_DEMO_FAMILY

    os.environ["STAGECHAT_DEMO_FAMILY"] = str(built)  # the registry's {demo_family}: measure what was just built
    evaluation = as_payload(
        evaluate(DEFAULT_CONFIG, split="test"), "test", registry_comparisons(DEFAULT_CONFIG, split="test")
    )
    quick = manifest.evaluate_quick(DEFAULT_CONFIG)
    shipped = manifest.ship(built, SHIPPED_DEMO_FAMILY, evaluation=evaluation, quick=quick)
    print(
        f"[build-demo] shipped {built} to {SHIPPED_DEMO_FAMILY} (recipe {shipped['recipe_hash'][:12]}); "
        f"targets missed on test: {len(evaluation['targets_missed'])}"
    )
    return 0
