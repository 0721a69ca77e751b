"""`stagechat serve`: the OpenAI API, the WebSocket and the UI over the stages of a registry file."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from cli.common import DEFAULT_CONFIG, fail
from server.settings import LIMIT_FIELDS, Settings


def add_parser(sub) -> None:
    serve = sub.add_parser("serve", help="serve the stages of a registry (OpenAI API, WebSocket, UI)")
    serve.add_argument("--config", default=str(DEFAULT_CONFIG), help="registry file (stages.yaml)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--database-url", default=None, help="SQLAlchemy URL (default: SQLite in the data dir)")
    serve.add_argument(
        "--max-engines",
        type=int,
        default=int(os.environ.get("STAGECHAT_MAX_ENGINES", 2)),
        help="most vLLM engines alive at once (idle ones are evicted)",
    )
    serve.add_argument("--no-log-prompts", action="store_true", help="do not store prompts and answers")
    serve.add_argument("--no-ui", action="store_true", help="API only, no Gradio UI at /")
    serve.add_argument(
        "--demo-family",
        default=None,
        metavar="DIR",
        help="the demo family the registry's {demo_family} names (default: STAGECHAT_DEMO_FAMILY, "
        "else the one shipped in models/demo/family/), e.g. a `build-demo --rebuild` output",
    )
    serve.add_argument("--log-level", default="info")
    limits = serve.add_argument_group(
        "limits", "0 turns a limit off; each also reads STAGECHAT_<NAME> (e.g. STAGECHAT_MAX_CONCURRENT_PER_KEY)"
    )
    for name, kind in LIMIT_FIELDS.items():
        limits.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=None, help=f"default {getattr(Settings, name)}"
        )
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from server.app import build_app
    from server.registry import RegistryError
    from server.storage_errors import sqlite_file, storage_fault

    if args.demo_family:  # read wherever a registry is loaded: this server, its rounds, their reloads
        os.environ["STAGECHAT_DEMO_FAMILY"] = str(Path(args.demo_family).resolve())
    settings = Settings.from_env(
        registry_path=Path(args.config).resolve(),
        database_url=args.database_url,
        log_prompts=False if args.no_log_prompts else None,
        **{name: getattr(args, name) for name in LIMIT_FIELDS},
    )
    try:
        app = build_app(settings, max_live_engines=args.max_engines, with_ui=not args.no_ui)
    except RegistryError as exc:
        return fail(None, exc)
    except Exception as exc:  # a data dir on a full or read-only disk: one line naming it, exit 2
        fault = storage_fault(exc, str(settings.data_dir), database=sqlite_file(settings.resolved_database_url))
        if fault is None:
            raise
        return fail("serve", f"cannot start: {fault.describe()}")
    # uvicorn closes a socket on a frame over ws_max_size; keep that above our own frame limit, which
    # answers with an error frame and keeps the socket.
    ws_max = max(16 * 1024 * 1024, settings.ws_max_frame_bytes + 1024 * 1024)
    run_uvicorn(
        app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5, ws_max_size=ws_max
    )
    return 0


def run_uvicorn(app, **options) -> None:
    """`uvicorn.run(app, **options)`, and on SIGTERM the process's exit handlers run (which remove
    vLLM's IPC sockets, `server.vllm_engine.prepare_engine_env`): after its graceful shutdown uvicorn
    raises the signal it caught again, and SIGTERM's default action would end the process without them."""
    import uvicorn

    signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(128 + sig))
    uvicorn.run(app, **options)
