"""`stagechat feedback export`: the store's ratings as a TRL dataset (JSON lines, a `datasets` folder, the Hub)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import fail


def add_parser(sub) -> None:
    fb = sub.add_parser("feedback", help="ratings and preferences")
    fb_sub = fb.add_subparsers(dest="feedback_command", required=True)
    export = fb_sub.add_parser("export", help="export ratings as a TRL dataset")
    export.add_argument("--format", choices=["kto", "dpo", "sft"], required=True)
    export.add_argument("--out", default=None, help="JSON-lines file")
    export.add_argument(
        "--hf-dataset",
        default=None,
        help="folder for a `datasets` DatasetDict (train/test by prompt) + dataset card README.md",
    )
    export.add_argument("--test-fraction", type=float, default=0.1, help="share of prompts in the test split")
    export.add_argument(
        "--push-to-hub",
        default=None,
        metavar="REPO",
        help="also push the DatasetDict and its card to this Hugging Face Hub repo (private)",
    )
    export.add_argument(
        "--min-gold-accuracy",
        type=float,
        default=None,
        metavar="X",
        help="leave out raters whose accuracy on arena gold questions is below X (0..1), as the leaderboard does",
    )
    export.add_argument("--database-url", default=None)
    export.set_defaults(func=export_feedback)


def export_feedback(args: argparse.Namespace) -> int:
    from server.export import export_to_file, export_to_hf_dataset
    from server.settings import Settings
    from server.storage_errors import sqlite_file, storage_fault
    from server.store import Store

    if not (args.out or args.hf_dataset or args.push_to_hub):
        return fail(None, "give --out FILE, --hf-dataset DIR and/or --push-to-hub REPO")
    if args.min_gold_accuracy is not None and not 0 <= args.min_gold_accuracy <= 1:
        return fail("feedback export", f"--min-gold-accuracy must be between 0 and 1; got {args.min_gold_accuracy:g}")
    url = Settings.from_env(database_url=args.database_url).resolved_database_url
    try:
        return _export(args, Store(url), export_to_file, export_to_hf_dataset)
    except Exception as exc:  # a full disk or read-only storage: one line naming the path, exit 2
        fault = storage_fault(exc, args.out, database=sqlite_file(url))
        if fault is None:
            raise
        return fail("feedback export", f"cannot export: {fault.describe()}; nothing was written")


def _export(args: argparse.Namespace, store, export_to_file, export_to_hf_dataset) -> int:
    from server.export import RaterFilter

    try:
        raters = RaterFilter.read(store, args.min_gold_accuracy)
        if args.min_gold_accuracy is not None:
            print(raters.describe())
        if args.out:
            count = export_to_file(store, args.format, Path(args.out), raters=raters)
            print(f"wrote {count} {args.format} rows to {args.out}")
        if args.hf_dataset or args.push_to_hub:
            count = export_to_hf_dataset(
                store,
                args.format,
                Path(args.hf_dataset) if args.hf_dataset else None,
                test_fraction=args.test_fraction,
                push_to_hub=args.push_to_hub,
                raters=raters,
            )
            where = " and ".join(x for x in (args.hf_dataset, args.push_to_hub and f"hub:{args.push_to_hub}") if x)
            print(f"saved a {count}-row dataset (train/test, with README.md) to {where}")
    finally:
        store.close()
    return 0
