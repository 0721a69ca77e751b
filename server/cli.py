"""The `stagechat` command: serve, build-demo, eval, feedback export, rlhf-round, reward-model.

Each subcommand parses its flags and calls one function elsewhere; nothing runs at import time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from server.settings import LIMIT_FIELDS, REPO_ROOT, Settings

DEFAULT_CONFIG = REPO_ROOT / "models" / "stages.yaml"


def _serve(args) -> int:
    import uvicorn

    from server.app import build_app
    from server.registry import RegistryError

    settings = Settings.from_env(registry_path=Path(args.config).resolve(), database_url=args.database_url,
                                 log_prompts=False if args.no_log_prompts else None,
                                 **{name: getattr(args, name) for name in LIMIT_FIELDS})
    try:
        app = build_app(settings, max_live_engines=args.max_engines, with_ui=not args.no_ui)
    except RegistryError as exc:
        print(f"stagechat: {exc}", file=sys.stderr)
        return 2
    # uvicorn closes a socket on a frame over ws_max_size; keep that above our own frame limit, which
    # answers with an error frame and keeps the socket.
    ws_max = max(16 * 1024 * 1024, settings.ws_max_frame_bytes + 1024 * 1024)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5,
                ws_max_size=ws_max)
    return 0


def _build_demo(args) -> int:
    from models.demo.build import build_demo

    out = Path(args.out) if args.out else Settings.from_env().data_dir / "demo"
    build_demo(out, size=args.size)
    return 0


def _eval(args) -> int:
    from models.eval import main as eval_main

    return eval_main(config=Path(args.config), as_json=args.json, kl_samples=args.kl_samples, split=args.split,
                     stages=args.stages)


def _feedback_export(args) -> int:
    from server.export import export_to_file, export_to_hf_dataset
    from server.store import Store

    if not (args.out or args.hf_dataset or args.push_to_hub):
        print("stagechat: give --out FILE, --hf-dataset DIR and/or --push-to-hub REPO", file=sys.stderr)
        return 2
    store = Store(Settings.from_env(database_url=args.database_url).resolved_database_url)
    try:
        if args.out:
            count = export_to_file(store, args.format, Path(args.out))
            print(f"wrote {count} {args.format} rows to {args.out}")
        if args.hf_dataset or args.push_to_hub:
            count = export_to_hf_dataset(store, args.format, Path(args.hf_dataset) if args.hf_dataset else None,
                                         test_fraction=args.test_fraction, push_to_hub=args.push_to_hub)
            where = " and ".join(x for x in (args.hf_dataset, args.push_to_hub and f"hub:{args.push_to_hub}") if x)
            print(f"saved a {count}-row dataset (train/test, with README.md) to {where}")
    finally:
        store.close()
    return 0


def _rlhf_round(args) -> int:
    from models.rlhf_round import run_round

    return run_round(args)


def _reward_model(args) -> int:
    from models.reward_model import run

    return run(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stagechat", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the stages of a registry (OpenAI API, WebSocket, UI)")
    serve.add_argument("--config", default=str(DEFAULT_CONFIG), help="registry file (stages.yaml)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--database-url", default=None, help="SQLAlchemy URL (default: SQLite in the data dir)")
    serve.add_argument("--max-engines", type=int, default=int(os.environ.get("STAGECHAT_MAX_ENGINES", 2)),
                       help="most vLLM engines alive at once (idle ones are evicted)")
    serve.add_argument("--no-log-prompts", action="store_true", help="do not store prompts and answers")
    serve.add_argument("--no-ui", action="store_true", help="API only, no Gradio UI at /")
    serve.add_argument("--log-level", default="info")
    limits = serve.add_argument_group("limits", "0 turns a limit off; each also reads STAGECHAT_<NAME> "
                                      "(e.g. STAGECHAT_MAX_CONCURRENT_PER_KEY)")
    for name, kind in LIMIT_FIELDS.items():
        limits.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                            help=f"default {getattr(Settings, name)}")
    serve.set_defaults(func=_serve)

    build = sub.add_parser("build-demo", help="train the demo family (base, sft, rlhf, draft)")
    build.add_argument("--config", default=str(DEFAULT_CONFIG), help="registry the family is built for")
    build.add_argument("--size", choices=["full", "smoke"], default="full")
    build.add_argument("--out", default=None, help="output folder (default: DATA_DIR/demo)")
    build.set_defaults(func=_build_demo)

    ev = sub.add_parser("eval", help="evaluate the stages through the serving path")
    ev.add_argument("--config", default=str(DEFAULT_CONFIG))
    ev.add_argument("--json", action="store_true", help="print JSON only")
    ev.add_argument("--kl-samples", type=int, default=2,
                    help="answers sampled per prompt for KL(stage || sft); 0 skips it (~1 min of transformers)")
    from models.demo.corpus import SPLITS  # plain data, no torch: --help stays fast

    ev.add_argument("--split", choices=sorted(SPLITS), default="test",
                    help="test: the held-out material the targets are measured on; dev: another held-out set, "
                         "for choosing a recipe without tuning on test")
    ev.add_argument("--stages", nargs="+", default=None, help="evaluate only these stages (default: all)")
    ev.set_defaults(func=_eval)

    fb = sub.add_parser("feedback", help="ratings and preferences")
    fb_sub = fb.add_subparsers(dest="feedback_command", required=True)
    export = fb_sub.add_parser("export", help="export ratings as a TRL dataset")
    export.add_argument("--format", choices=["kto", "dpo", "sft"], required=True)
    export.add_argument("--out", default=None, help="JSON-lines file")
    export.add_argument("--hf-dataset", default=None,
                        help="folder for a `datasets` DatasetDict (train/test by prompt) + dataset card README.md")
    export.add_argument("--test-fraction", type=float, default=0.1, help="share of prompts in the test split")
    export.add_argument("--push-to-hub", default=None, metavar="REPO",
                        help="also push the DatasetDict and its card to this Hugging Face Hub repo (private)")
    export.add_argument("--database-url", default=None)
    export.set_defaults(func=_feedback_export)

    rr = sub.add_parser("rlhf-round", help="train the next RLHF stage on collected ratings and register it")
    rr.add_argument("--config", default=str(DEFAULT_CONFIG))
    rr.add_argument("--from-stage", default="rlhf")
    rr.add_argument("--method", choices=["kto", "dpo", "rloo"], default="kto",
                    help="kto/dpo: offline, on ratings; rloo: online RL against --reward-model")
    rr.add_argument("--name", required=True)
    rr.add_argument("--min-ratings", type=int, default=1)
    rr.add_argument("--steps", type=int, default=None, help="training steps (default: about 4 epochs, 20-200)")
    rr.add_argument("--lr", type=float, default=5e-4, help="learning rate")
    rr.add_argument("--database-url", default=None)
    rr.add_argument("--server", default=None, help="URL of a running server to reload (POST /v1/admin/reload)")
    rr.add_argument("--reward-model", default=None, help="rloo: the reward model to optimise against")
    rr.add_argument("--kl-coef", type=float, default=0.05, help="rloo: KL penalty to the starting policy")
    rr.add_argument("--prompts", default=None, help="rloo: a JSON-lines file of prompts (default: the store's)")
    rr.set_defaults(func=_rlhf_round)

    rm = sub.add_parser("reward-model", help="train a reward model on the store's comparisons and register it")
    rm.add_argument("--config", default=str(DEFAULT_CONFIG))
    rm.add_argument("--name", required=True)
    rm.add_argument("--from-stage", default="sft", help="the stage whose checkpoint the reward model starts from")
    rm.add_argument("--min-pairs", type=int, default=10, help="refuse to train on fewer comparison pairs")
    rm.add_argument("--steps", type=int, default=None, help="training steps (default: about 4 epochs, 20-300)")
    rm.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    rm.add_argument("--database-url", default=None)
    rm.add_argument("--server", default=None, help="URL of a running server to reload (POST /v1/admin/reload)")
    rm.set_defaults(func=_reward_model)
    return p


def main(argv: list[str] | None = None) -> int:
    # Logs go to stderr, vLLM's included, so stdout carries only results (`eval --json`, exports).
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
