"""`stagechat eval`: measure every stage through the serving path, print the table (or JSON), and exit 1
when the test split misses a demo target (`models.eval.TARGETS`)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from cli.common import DEFAULT_CONFIG, fail


def add_parser(sub) -> None:
    from models.demo.heldout import SPLITS  # plain data, no torch: --help stays fast

    ev = sub.add_parser("eval", help="evaluate the stages through the serving path")
    ev.add_argument("--config", default=str(DEFAULT_CONFIG))
    ev.add_argument("--json", action="store_true", help="print JSON only")
    ev.add_argument(
        "--kl-samples",
        type=int,
        default=2,
        help="answers sampled per prompt for KL(stage || sft); 0 skips it (~1 min of transformers)",
    )
    ev.add_argument(
        "--split",
        choices=sorted(SPLITS),
        default="test",
        help="test: the held-out material the targets are measured on; dev: another held-out set, "
        "for choosing a recipe without tuning on test",
    )
    ev.add_argument("--stages", nargs="+", default=None, help="evaluate only these stages (default: all)")
    ev.set_defaults(
        func=lambda args: report(
            config=Path(args.config),
            as_json=args.json,
            kl_samples=args.kl_samples,
            split=args.split,
            stages=args.stages,
        )
    )


def as_payload(reports: dict, split: str, reward_models: dict | None = None) -> dict:
    """What `--json` prints (and a shipped family's manifest keeps): every report, each reward model's
    comparisons (`models.rm_eval`), the targets missed."""
    from models.eval import check_targets
    from models.rm_eval import missed_targets

    reward_models = reward_models or {}
    missed = check_targets(reports) + missed_targets(reward_models) if split == "test" else []
    stages = {name: asdict(r) for name, r in reports.items()}
    return {"split": split, "stages": stages, "reward_models": reward_models, "targets_missed": missed}


def report(
    config: Path, as_json: bool = False, kl_samples: int = 2, split: str = "test", stages: list[str] | None = None
) -> int:
    """Evaluate and print; the exit code is 1 when the test split misses a target (issue 10). The dev
    split is for choosing a recipe: its figures are printed, not held to the targets."""
    from models.eval import EvalError, evaluate, format_table
    from models.rm_eval import registry_comparisons

    try:
        reports = evaluate(config, kl_samples=kl_samples, split=split, stages=stages)
    except EvalError as exc:
        return fail("eval", exc, code=1)
    payload = as_payload(reports, split, registry_comparisons(config, split))
    missed = payload["targets_missed"]
    if as_json:
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        print(f"split: {split}")
        print(format_table(reports))
        print(json.dumps({n: {k: v for k, v in asdict(r).items() if k != "examples"} for n, r in reports.items()}))
        for name, figures in payload["reward_models"].items():
            print(f"reward model {name}, the full sentence above each rival: {json.dumps(figures)}")
        for name, r in reports.items():
            for ex in r.examples:
                print(f"{name:5s} {ex['kind']:9s} {ex['prompt'][-1]['content']!r} -> {ex['reply']!r}")
        for line in missed:
            print(f"target missed: {line}", file=sys.stderr)
    return 1 if missed else 0
