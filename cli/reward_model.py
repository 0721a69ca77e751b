"""`stagechat reward-model`: train a reward model on the store's comparisons, register it, optionally serve it
(`models.reward_model`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import DEFAULT_CONFIG, fail, print_reload


def add_parser(sub) -> None:
    rm = sub.add_parser("reward-model", help="train a reward model on the store's comparisons and register it")
    rm.add_argument("--config", default=str(DEFAULT_CONFIG))
    rm.add_argument("--name", required=True)
    rm.add_argument("--from-stage", default="sft", help="the stage whose checkpoint the reward model starts from")
    rm.add_argument("--min-pairs", type=int, default=10, help="refuse to train on fewer comparison pairs")
    rm.add_argument("--steps", type=int, default=None, help="training steps (default: about 4 epochs, 20-300)")
    rm.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    rm.add_argument("--database-url", default=None)
    rm.add_argument("--server", default=None, help="URL of a running server to reload (POST /v1/admin/reload)")
    rm.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models.reward_model import RewardPlan, build_reward_model
    from models.rounds import RoundError
    from server.registry import RegistryError
    from server.settings import Settings

    settings = Settings.from_env(database_url=args.database_url)
    try:
        result = build_reward_model(
            config=Path(args.config),
            from_stage=args.from_stage,
            name=args.name,
            database_url=settings.resolved_database_url,
            data_dir=settings.data_dir,
            min_pairs=args.min_pairs,
            plan=RewardPlan(steps=args.steps, lr=args.lr),
            server=args.server,
            admin_key=settings.admin_key,
        )
    except (RoundError, RegistryError) as exc:
        return fail("reward-model", exc)
    used = ", ".join(f"{n} from {s}" for s, n in result.sources.items() if n)
    print(
        f"reward model '{result.name}': {result.train_pairs} training pairs, {result.held_out_pairs} held out "
        f"({used}); {result.steps} steps in {result.train_seconds:.1f} s → {result.model_dir}"
    )
    print(f"held-out pairwise accuracy: {result.held_out_accuracy:.3f}")
    print_reload(args.server, result.reloaded, added=False)
    return 0
