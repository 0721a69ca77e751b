"""scripts/bench_soak.py without a soak: its arguments and the summaries it reports (TTFT windows, RSS
growth, the write ledger, the time from an engine kill to serving again, the kinds of errors)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    # The scripts import the harness as a sibling module (`python scripts/x.py`): load both from their
    # files under those names, so no path is added for the whole test session.
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return sys.modules[name]


_load("bench_common")
soak = _load("bench_soak")


def test_arguments_default_to_a_30_minute_soak_and_refuse_a_restart_without_postgresql(capsys):
    args = soak.parse_args([])
    assert args.minutes == 30 and args.window_minutes == 5 and args.restart_database is None and args.json is None
    assert soak.parse_args(["--minutes", "3", "--json"]).json == "-"
    with pytest.raises(SystemExit):
        soak.parse_args(["--restart-database", "/var/lib/pg"])  # SQLite: nothing the script may restart
    assert "postgresql --database-url" in capsys.readouterr().err
    ok = soak.parse_args(["--restart-database", "/pg", "--database-url", "postgresql+psycopg://u@127.0.0.1/db"])
    assert ok.restart_database == "/pg"
    with pytest.raises(SystemExit):
        soak.parse_args(["--minutes", "0"])


def test_ttft_windows_give_p50_and_p99_per_window():
    ttfts = [(10, 0.010), (20, 0.030), (50, 0.020), (70, 0.100), (110, 0.200)]  # (t s, TTFT s)
    windows = soak.ttft_windows(ttfts, 60)
    assert [w["n"] for w in windows] == [3, 2]
    assert windows[0]["p50_ms"] == pytest.approx(20) and windows[0]["p99_ms"] == pytest.approx(30)
    assert windows[1]["from_s"] == 60 and windows[1]["p99_ms"] == pytest.approx(200)
    assert soak.ttft_windows([], 60) == []


def test_rss_summary_is_first_to_last_sample():
    summary = soak.rss_summary([(0, 300.0, 1000.0), (5, 340.0, 1100.0), (10, 320.0, 1050.0)])
    assert summary["server_growth_mib"] == 20 and summary["server_max_mib"] == 340
    assert summary["engines_end_mib"] == 1050
    assert soak.rss_summary([]) == {}


def test_the_ledger_counts_lost_and_unacknowledged_writes():
    ledger = soak.write_ledger(
        {"feedback": {"a", "b", "c"}, "ranking": set()}, {"feedback": {"a", "b", "d"}, "ranking": set()}
    )
    assert ledger["feedback"] == {"acknowledged": 3, "stored": 3, "lost": 1, "unacknowledged_stored": 1}
    assert ledger["ranking"]["lost"] == 0


def test_recovery_is_the_first_good_stream_begun_after_the_kill():
    assert soak.recovery_seconds(100.0, [50.0, 99.0, 131.5, 140.0]) == pytest.approx(31.5)
    assert soak.recovery_seconds(100.0, [50.0]) is None


def test_error_kinds():
    body = '{"error": {"message": "restarting", "code": "engine_unavailable"}}'
    assert soak.error_kind(503, body) == "503 engine_unavailable"
    assert soak.error_kind(500, "Internal Server Error") == "500 (no JSON error body)"
    assert soak.error_kind(200, body) == "in-band error (engine_unavailable)"
    assert soak.error_kind(None, exc=httpx.RemoteProtocolError("reset")) == "reset (RemoteProtocolError)"
    assert soak.error_kind(None, exc=httpx.ReadTimeout("slow")) == "timeout"
