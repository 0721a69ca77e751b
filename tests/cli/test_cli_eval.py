"""`stagechat eval`: the flags reach the evaluation (which itself is tested in tests/models/test_eval*.py)."""

from __future__ import annotations


def test_the_stagechat_command_passes_the_kl_sample_count_on(monkeypatch):
    import cli.eval
    from cli.main import main

    calls = []
    monkeypatch.setattr(cli.eval, "report", lambda **kwargs: calls.append(kwargs) or 0)
    assert main(["eval", "--json", "--kl-samples", "0"]) == 0
    assert calls[0]["kl_samples"] == 0 and calls[0]["as_json"] is True
    assert calls[0]["split"] == "test" and calls[0]["stages"] is None
    assert main(["eval", "--split", "dev", "--stages", "sft", "rlhf"]) == 0
    assert calls[1]["split"] == "dev" and calls[1]["stages"] == ["sft", "rlhf"]


def test_an_unknown_stage_is_refused_before_any_engine_starts(tiny_family, capsys):
    from cli.main import main

    assert main(["eval", "--config", str(tiny_family / "stages.yaml"), "--stages", "nope"]) == 1
    assert "stagechat eval: no stage nope in" in capsys.readouterr().err
