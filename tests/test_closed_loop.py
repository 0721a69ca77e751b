"""The closed loop, end to end on real parts: serve → rate over HTTP → train a round → hot reload → measure.

Answers come from a live `stagechat serve` (real vLLM) on a tiny random family, are rated through
`POST /v1/feedback` by the scripted short-answer rater of `models.closed_loop` (so the store holds real
generation records), a DPO round continues the rlhf adapter, `POST /v1/admin/reload` adds the new stage
to the same running engine, and the trait is measured again on the new stage through the server.
Then Ctrl-C (SIGINT) stops that server and every engine process it started (SIGTERM:
tests/server/test_load_faults.py).
"""

from __future__ import annotations

import signal

import httpx
import pytest

from models.closed_loop import run_loop
from tests.conftest import assert_a_signal_stops_every_engine


@pytest.mark.integration
def test_a_round_on_ratings_moves_the_trait_and_serves_without_restart(tmp_path):
    from models.tiny import make_tiny_adapter, make_tiny_checkpoint
    from server.launcher import stagechat_server

    make_tiny_checkpoint(tmp_path / "base")
    make_tiny_adapter(tmp_path / "base", tmp_path / "rlhf", rank=8)
    config = tmp_path / "stages.yaml"
    config.write_text(
        "engine: {max_model_len: 512, dtype: float32}\n"
        "stages:\n"
        "  base:\n    model: ./base\n"
        "  rlhf:\n    adapter: ./rlhf\n    base: base\n"
    )
    data_dir = tmp_path / "data"
    server = stagechat_server(config, data_dir, ("--no-ui",))
    try:
        pid = server.process.pid
        report = run_loop(server.url, config=config, data_dir=data_dir, stages=["base", "rlhf"])
        print("\nCLOSED LOOP", {k: v for k, v in vars(report).items() if k != "reload"})

        assert report.reload["added"] == ["rlhf-2"] and report.reload["restarted_engines"] == []
        models = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
        assert models["rlhf-2"]["parent"] == "rlhf"
        assert server.process.poll() is None and server.process.pid == pid  # the same server served it
        assert report.after_rate >= report.before_rate + 0.2, report
        assert_a_signal_stops_every_engine(server, signal.SIGINT)
    finally:
        server.stop()
