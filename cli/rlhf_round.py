"""`stagechat rlhf-round`: train the next stage on the store's feedback, register it, optionally serve it.

`--method kto|dpo`: offline preference tuning on the ratings (`models.preference_round`);
`--method rloo`: online RL against a reward model (`models.rl_round`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import DEFAULT_CONFIG, fail, print_reload


def add_parser(sub) -> None:
    rr = sub.add_parser("rlhf-round", help="train the next RLHF stage on collected ratings and register it")
    rr.add_argument("--config", default=str(DEFAULT_CONFIG))
    rr.add_argument("--from-stage", default="rlhf")
    rr.add_argument(
        "--method",
        choices=["kto", "dpo", "rloo"],
        default="kto",
        help="kto/dpo: offline, on ratings; rloo: online RL against --reward-model",
    )
    rr.add_argument("--name", required=True)
    rr.add_argument("--min-ratings", type=int, default=None, help="kto/dpo: refuse with fewer rows (default 1)")
    rr.add_argument("--steps", type=int, default=None, help="training steps (default: about 4 epochs, 20-200)")
    rr.add_argument("--lr", type=float, default=5e-4, help="learning rate")
    rr.add_argument("--database-url", default=None)
    rr.add_argument("--server", default=None, help="URL of a running server to reload (POST /v1/admin/reload)")
    rr.add_argument("--reward-model", default=None, help="rloo: the reward model to optimise against")
    rr.add_argument("--kl-coef", type=float, default=None, help="rloo: KL penalty to the starting policy (0.05)")
    rr.add_argument("--prompts", default=None, help="rloo: a JSON-lines file of prompts (default: the store's)")
    rr.set_defaults(func=run)


# The flags only one kind of round reads: given to the other kind, they are refused, never ignored.
ONLY_FOR = {
    "--min-ratings": ("kto", "dpo"),
    "--reward-model": ("rloo",),
    "--kl-coef": ("rloo",),
    "--prompts": ("rloo",),
}


def unused_flag(args: argparse.Namespace) -> str | None:
    """The first flag given that `--method` does not read."""
    for flag, methods in ONLY_FOR.items():
        if getattr(args, flag[2:].replace("-", "_")) is not None and args.method not in methods:
            return f"{flag} is for --method {'/'.join(methods)}, not {args.method}"
    return None


def run(args: argparse.Namespace) -> int:
    from models.rounds import RoundError
    from server.registry import RegistryError
    from server.settings import Settings

    if unused := unused_flag(args):
        return fail("rlhf-round", unused)
    settings = Settings.from_env(database_url=args.database_url)
    try:
        if args.method == "rloo":
            _rl_round(args, settings)
        else:
            _preference_round(args, settings)
    except (RoundError, RegistryError) as exc:
        return fail("rlhf-round", exc)
    return 0


def _preference_round(args: argparse.Namespace, settings) -> None:
    from models.preference_round import RoundPlan, train_round

    result = train_round(
        config=Path(args.config),
        from_stage=args.from_stage,
        name=args.name,
        method=args.method,
        database_url=settings.resolved_database_url,
        data_dir=settings.data_dir,
        min_ratings=1 if args.min_ratings is None else args.min_ratings,
        server=args.server,
        admin_key=settings.admin_key,
        plan=RoundPlan(method=args.method, steps=args.steps, lr=args.lr),
    )
    print(
        f"stage '{result.name}': {result.rows} {args.method} rows, {result.steps} steps in "
        f"{result.train_seconds:.1f} s (loss {result.loss:.4f}) → {result.adapter_dir}"
    )
    print_reload(args.server, result.reloaded)


def _rl_round(args: argparse.Namespace, settings) -> None:
    from models.rl_round import RLPlan, train_rl_round

    result = train_rl_round(
        config=Path(args.config),
        from_stage=args.from_stage,
        name=args.name,
        reward_model=args.reward_model,
        database_url=settings.resolved_database_url,
        data_dir=settings.data_dir,
        plan=RLPlan(
            steps=args.steps or RLPlan.steps,
            kl_coef=RLPlan.kl_coef if args.kl_coef is None else args.kl_coef,
            lr=args.lr,
        ),
        prompts_file=Path(args.prompts) if args.prompts else None,
        server=args.server,
        admin_key=settings.admin_key,
    )
    held = f"{result.held_out_prompts} held-out prompts" if result.held_out_prompts else "the training prompts"
    kl = f"{result.final_kl:.4f}" if result.final_kl is not None else "n/a"
    print(
        f"stage '{result.name}': RLOO on {result.prompts} prompts, {result.steps} steps in "
        f"{result.train_seconds:.1f} s → {result.adapter_dir}"
    )
    print(
        f"mean reward on {held}: {result.reward_before:.3f} before, {result.reward_after:.3f} after; "
        f"final KL to start {kl}"
    )
    print_reload(args.server, result.reloaded)
