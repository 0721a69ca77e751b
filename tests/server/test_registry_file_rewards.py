"""registry_file.add_reward_model: appended under `reward_models:` (comments kept) or the file rewritten,
always validated and swapped in atomically; a taken name or a bad entry changes nothing."""

from __future__ import annotations

import pytest
import yaml

from server.registry import RegistryError, load_registry
from server.registry_file import add_reward_model, add_stage


@pytest.fixture
def checkpoint(tmp_path):
    (tmp_path / "ckpt").mkdir()
    return tmp_path / "ckpt"


def test_a_first_reward_model_opens_the_section_and_keeps_comments(tmp_path, checkpoint):
    path = tmp_path / "stages.yaml"
    path.write_text(f"# keep me\nstages:\n  base:\n    model: {checkpoint}  # inline\n")
    add_reward_model(path, "rm", {"model": str(checkpoint), "description": "d"}, data_dir=tmp_path)
    assert path.read_text().startswith("# keep me\n") and "# inline" in path.read_text()
    assert load_registry(path, data_dir=tmp_path).reward_models["rm"].description == "d"
    add_reward_model(path, "rm2", {"model": str(checkpoint)}, data_dir=tmp_path)  # appended to the section
    assert list(load_registry(path, data_dir=tmp_path).reward_models) == ["rm", "rm2"]
    assert "# keep me" in path.read_text()


def test_a_section_that_is_not_last_is_rewritten_from_the_data(tmp_path, checkpoint):
    path = tmp_path / "stages.yaml"
    path.write_text(f"reward_models:\n  rm: {{model: {checkpoint}}}\nstages:\n  base: {{model: {checkpoint}}}\n")
    add_reward_model(path, "rm2", {"model": str(checkpoint)}, data_dir=tmp_path)
    assert set(yaml.safe_load(path.read_text())["reward_models"]) == {"rm", "rm2"}
    add_stage(path, "b2", {"model": str(checkpoint)}, data_dir=tmp_path)  # stages still work after it
    assert set(load_registry(path, data_dir=tmp_path).stages) == {"base", "b2"}


@pytest.mark.parametrize(
    "name, entry, message",
    [
        ("base", {"model": "x"}, "already exists"),
        ("bad name", {"model": "x"}, "must be letters"),
        ("rm", {"model": "/does/not/exist"}, "does not exist"),
        ("rm", {"nope": 1}, "reward_models"),
    ],
)
def test_refusals_change_nothing(tmp_path, checkpoint, name, entry, message):
    path = tmp_path / "stages.yaml"
    path.write_text(f"stages:\n  base:\n    model: {checkpoint}\n")
    before = path.read_text()
    with pytest.raises(RegistryError, match=message):
        add_reward_model(path, name, entry, data_dir=tmp_path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
