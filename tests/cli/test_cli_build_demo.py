"""`stagechat build-demo`: --rebuild starts every step over, --ship takes only a full build."""

from __future__ import annotations

from cli.main import main
from models.demo import build


def test_rebuild_removes_every_built_step_and_nothing_else(tmp_path, monkeypatch):
    for step in build.STEPS:
        (tmp_path / step).mkdir()
        (tmp_path / step / build.MARKER).write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    seen = {}
    monkeypatch.setattr(
        build,
        "build_demo",
        lambda out, size: seen.update(left=sorted(p.name for p in out.iterdir()), size=size) or {"total": 0.0},
    )
    assert main(["build-demo", "--size", "smoke", "--out", str(tmp_path), "--rebuild"]) == 0
    assert seen == {"left": ["notes.txt"], "size": "smoke"}


def test_ship_refuses_a_smoke_build_before_building(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "build_demo", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built")))
    assert main(["build-demo", "--size", "smoke", "--out", str(tmp_path), "--ship"]) == 2
    assert "full build only" in capsys.readouterr().err


def test_serve_names_the_demo_family():
    from cli.main import parser

    assert parser().parse_args(["serve", "--demo-family", "data/demo"]).demo_family == "data/demo"
