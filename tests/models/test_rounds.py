"""rounds: the one round lifecycle. A staged folder is renamed into place only when its work succeeds;
a failure anywhere before the registry write leaves no folder and no registry change; a registration
that fails removes the folder; a taken or malformed name is refused before anything is written.

Real parts: the registry file on disk and its writer, folders on disk. The "training" is a copy of
the tiny LoRA adapter (tests/conftest.py's `tiny_family`); a reload answer is a stubbed HTTP reply.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from models.rounds import ROUND_META, Round, RoundError, stage_folder
from server.registry import RegistryError, load_registry


class Boom(Exception):
    pass


def _fail(_: Path):
    raise Boom("training failed")


def _meta(result, seconds: float) -> dict:
    return {"result": result, "seconds": seconds}


# -- the staged folder ---------------------------------------------------------------------------


def test_the_staged_folder_is_renamed_into_place_with_its_meta(tmp_path):
    final = tmp_path / "out" / "step"

    def work(folder: Path) -> str:
        assert folder != final and folder.is_dir() and not final.exists()
        (folder / "weights.bin").write_text("w")
        return "ok"

    result, seconds = stage_folder(final, work, _meta, "meta.json")
    assert result == "ok" and seconds >= 0
    assert (final / "weights.bin").read_text() == "w"
    assert json.loads((final / "meta.json").read_text()) == {"result": "ok", "seconds": seconds}
    assert sorted(p.name for p in final.parent.iterdir()) == ["step"]  # no partial folder left


def test_a_failed_step_leaves_no_folder(tmp_path):
    final = tmp_path / "step"
    with pytest.raises(Boom):
        stage_folder(final, _fail, _meta, "meta.json")
    assert list(tmp_path.iterdir()) == []


def test_replace_swaps_an_old_folder_only_on_success(tmp_path):
    final = tmp_path / "step"
    final.mkdir()
    (final / "old").write_text("old")
    partial = tmp_path / "step.partial"
    with pytest.raises(Boom):
        stage_folder(final, _fail, _meta, "meta.json", partial=partial, replace=True)
    assert (final / "old").exists() and not partial.exists()  # the old build stays when the new one fails
    stage_folder(final, lambda d: (d / "new").write_text("new"), _meta, "meta.json", partial=partial, replace=True)
    assert (final / "new").exists() and not (final / "old").exists() and not partial.exists()


# -- the round -----------------------------------------------------------------------------------


@pytest.fixture
def registry_file(tiny_family, tmp_path) -> Path:
    path = tmp_path / "stages.yaml"
    path.write_text(
        "# a registry (comments survive a round)\n"
        "stages:\n"
        f"  base:\n    model: {tiny_family / 'base'}\n"
        f"  sft:\n    adapter: {tiny_family / 'lora'}\n    base: base\n    sampling: {{temperature: 0.7}}\n"
    )
    return path


def _copy_adapter(tiny_family: Path):
    def work(folder: Path) -> int:
        shutil.copytree(tiny_family / "lora", folder, dirs_exist_ok=True)
        return 3

    return work


def test_a_round_registers_its_folder_as_a_child_stage(registry_file, tiny_family, tmp_path):
    round_ = Round.open(registry_file, tmp_path, "sft", "sft-2")
    assert round_.out_dir == tmp_path / "rounds" / "sft-2"
    assert round_.checkpoint == str(tiny_family / "base") and round_.start_adapter == str(tiny_family / "lora")
    done = round_.run(_copy_adapter(tiny_family), _meta, description=lambda steps: f"{steps} steps")
    assert done.result == 3 and done.reloaded is None
    meta = json.loads((round_.out_dir / ROUND_META).read_text())
    assert meta["result"] == 3 and "created_at" in meta
    registry = load_registry(registry_file, data_dir=tmp_path)
    new = registry.stages["sft-2"]
    assert new.adapter == str(round_.out_dir) and new.base == "sft" and new.description == "3 steps"
    assert new.sampling.temperature == 0.7  # inherited from the from-stage
    assert registry_file.read_text().startswith("# a registry")
    assert sorted(p.name for p in (tmp_path / "rounds").iterdir()) == ["sft-2"]


def test_a_reward_model_round_registers_under_reward_models(registry_file, tiny_family, tmp_path):
    round_ = Round.open(registry_file, tmp_path, "sft", "rm", kind="reward_model")
    assert round_.out_dir == tmp_path / "reward_models" / "rm"
    round_.run(
        lambda d: shutil.copytree(tiny_family / "base", d, dirs_exist_ok=True) and None,
        _meta,
        description="a reward model",
        meta_file="rm.json",
    )
    assert load_registry(registry_file, data_dir=tmp_path).reward_models["rm"].model == str(round_.out_dir)
    assert (round_.out_dir / "rm.json").exists()


def test_a_failed_training_changes_nothing(registry_file, tmp_path):
    before = registry_file.read_text()
    with pytest.raises(Boom):
        Round.open(registry_file, tmp_path, "sft", "sft-2").run(_fail, _meta, description="x")
    assert registry_file.read_text() == before
    assert list((tmp_path / "rounds").iterdir()) == []  # no folder, no partial folder


def test_a_failed_registration_removes_the_folder(registry_file, tiny_family, tmp_path, monkeypatch):
    import server.registry_file

    def refuse(*args, **kwargs):
        raise RegistryError("the registry file changed under us")

    monkeypatch.setattr(server.registry_file, "add_stage", refuse)
    before = registry_file.read_text()
    round_ = Round.open(registry_file, tmp_path, "sft", "sft-2")
    with pytest.raises(RegistryError, match="changed under us"):
        round_.run(_copy_adapter(tiny_family), _meta, description="x")
    assert registry_file.read_text() == before
    assert not round_.out_dir.exists() and list((tmp_path / "rounds").iterdir()) == []


@pytest.mark.parametrize(
    "from_stage, name, message",
    [
        ("sft", "base", "already exists"),  # a stage's name
        ("nope", "x", "not a stage"),
        ("sft", "../evil", "use letters"),
    ],
)
def test_taken_or_bad_names_are_refused_before_anything_is_written(registry_file, tmp_path, from_stage, name, message):
    before = registry_file.read_text()
    with pytest.raises(RoundError, match=message):
        Round.open(registry_file, tmp_path, from_stage, name)
    assert registry_file.read_text() == before and list(tmp_path.iterdir()) == [registry_file]


def test_a_leftover_folder_of_the_same_name_is_refused(registry_file, tmp_path):
    (tmp_path / "rounds" / "sft-2").mkdir(parents=True)
    with pytest.raises(RoundError, match="already exists; pick another --name"):
        Round.open(registry_file, tmp_path, "sft", "sft-2")


def test_a_failed_reload_says_the_round_is_registered(registry_file, tiny_family, tmp_path, monkeypatch):
    asked = []

    def post(url, **kwargs):
        asked.append((url, kwargs["headers"]))
        return httpx.Response(503, text="not ready")

    monkeypatch.setattr(httpx, "post", post)
    round_ = Round.open(registry_file, tmp_path, "sft", "sft-2")
    with pytest.raises(RoundError, match="registered, but http://server/ did not reload: 503 not ready"):
        round_.run(_copy_adapter(tiny_family), _meta, description="x", server="http://server/", admin_key="k")
    assert asked == [("http://server/v1/admin/reload", {"Authorization": "Bearer k"})]
    assert "sft-2" in load_registry(registry_file, data_dir=tmp_path).stages  # kept: a later reload serves it


def test_a_reload_answer_is_returned(registry_file, tiny_family, tmp_path, monkeypatch):
    monkeypatch.setattr(httpx, "post", lambda url, **kwargs: httpx.Response(200, json={"added": ["sft-2"]}))
    done = Round.open(registry_file, tmp_path, "sft", "sft-2").run(
        _copy_adapter(tiny_family), _meta, description="x", server="http://server"
    )
    assert done.reloaded == {"added": ["sft-2"]}
