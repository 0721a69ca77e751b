"""`stagechat rlhf-round` and `stagechat reward-model`: a refused round is an error message and exit code 2
(the rounds themselves: tests/models/test_preference_round.py, test_rl_round.py, test_reward_model.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def registry_file(tiny_family, tmp_path) -> Path:
    path = tmp_path / "stages.yaml"
    path.write_text(
        "stages:\n"
        f"  base:\n    model: {tiny_family / 'base'}\n"
        f"  rlhf:\n    adapter: {tiny_family / 'lora'}\n    base: base\n"
    )
    return path


def test_cli_reports_too_few_ratings(registry_file, tmp_path, monkeypatch, capsys):
    from cli.main import main

    monkeypatch.setenv("STAGECHAT_DATA_DIR", str(tmp_path))
    db = f"sqlite:///{tmp_path / 'stagechat.db'}"
    code = main(
        [
            "rlhf-round",
            "--config",
            str(registry_file),
            "--from-stage",
            "rlhf",
            "--name",
            "rlhf-2",
            "--min-ratings",
            "100",
            "--database-url",
            db,
        ]
    )
    assert code == 2
    assert "--min-ratings is 100" in capsys.readouterr().err


def test_reward_model_refuses_a_taken_name(registry_file, tmp_path, monkeypatch, capsys):
    from cli.main import main

    monkeypatch.setenv("STAGECHAT_DATA_DIR", str(tmp_path))
    before = registry_file.read_text()
    code = main(
        [
            "reward-model",
            "--config",
            str(registry_file),
            "--from-stage",
            "rlhf",
            "--name",
            "base",
            "--database-url",
            f"sqlite:///{tmp_path / 'stagechat.db'}",
        ]
    )
    assert code == 2
    assert "stagechat reward-model: 'base' already exists" in capsys.readouterr().err
    assert registry_file.read_text() == before


@pytest.mark.parametrize(
    ("method", "flags", "named"),
    [
        ("kto", ["--kl-coef", "0.1"], "--kl-coef is for --method rloo, not kto"),
        ("dpo", ["--reward-model", "rm"], "--reward-model is for --method rloo, not dpo"),
        ("kto", ["--prompts", "p.jsonl"], "--prompts is for --method rloo, not kto"),
        ("rloo", ["--min-ratings", "5"], "--min-ratings is for --method kto/dpo, not rloo"),
    ],
)
def test_a_flag_the_method_does_not_read_is_refused(registry_file, tmp_path, monkeypatch, capsys, method, flags, named):
    from cli.main import main

    monkeypatch.setenv("STAGECHAT_DATA_DIR", str(tmp_path))
    before = registry_file.read_text()
    argv = ["rlhf-round", "--config", str(registry_file), "--name", "rlhf-2", "--method", method, *flags]
    assert main(argv) == 2
    assert named in capsys.readouterr().err
    assert registry_file.read_text() == before and not list(tmp_path.glob("rounds/*"))
