"""Run the closed loop on a family (default: the demo family) and print the figures.

Copies the registry into a scratch folder (the round adds its stage there, not to the committed
file), starts `stagechat serve` on it with a scratch data dir for the store and the round, runs
`models.closed_loop.run_loop` and prints the trait rate before/after, the round's training time and
the loop time (as indented JSON; `--json`: one line).

    python scripts/closed_loop.py [--config models/stages.yaml] [--steps 60] [--json [FILE]]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench_common import add_json_argument, output, running

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "models" / "stages.yaml"))
    p.add_argument("--stages", default="base,sft,rlhf", help="stages whose answers get rated")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--method", choices=["dpo", "kto"], default="dpo")
    add_json_argument(p)
    args = p.parse_args()
    from models.closed_loop import run_loop
    from server.launcher import stagechat_server
    from server.settings import default_data_dir

    with output(args) as figures:
        scratch = Path(tempfile.mkdtemp(prefix="stagechat-loop-"))
        config = scratch / "stages.yaml"
        # Paths pointing into the real data dir stay valid; the store and the round go to scratch.
        config.write_text(Path(args.config).read_text().replace("{data_dir}", str(default_data_dir())))
        data_dir = scratch / "data"
        data_dir.mkdir()
        began = time.monotonic()
        with running(stagechat_server(config, data_dir, ("--no-ui",))) as server:
            report = run_loop(
                server.url,
                config=config,
                data_dir=data_dir,
                stages=args.stages.split(","),
                steps=args.steps,
                lr=args.lr,
                method=args.method,
            )
            figures.update({k: v for k, v in vars(report).items() if k != "reload"})
            figures.update(
                server_ready_seconds=round(server.ready_seconds, 1),
                total_seconds=round(time.monotonic() - began, 1),
                restarted_engines=report.reload["restarted_engines"],
            )
            print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
