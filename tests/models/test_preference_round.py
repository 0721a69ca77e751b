"""preference_round: a round trains on the store's ratings and registers a valid stage, or changes nothing.

Real parts: a SQLite store with logged answers and ratings, TRL's KTO/DPO trainers on a random tiny
checkpoint (a few steps), the registry file on disk. No server: reload is tested in test_admin.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from models.preference_round import RoundPlan, train_round
from models.rounds import RoundError
from server.registry import RegistryError, load_registry
from server.registry_file import add_stage
from server.store import Store
from tests.records import chat_record

_ids = itertools.count()


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    from models.tiny import make_tiny_adapter, make_tiny_checkpoint

    root = tmp_path_factory.mktemp("family")
    make_tiny_checkpoint(root / "base")
    make_tiny_adapter(root / "base", root / "rlhf")
    return root


@pytest.fixture
def registry_file(family, tmp_path) -> Path:
    path = tmp_path / "stages.yaml"
    path.write_text(
        "# the demo registry (comments survive a round)\n"
        "engine: {max_model_len: 512}\n"
        "stages:\n"
        f"  base:\n    model: {family / 'base'}\n"
        f"  rlhf:\n    adapter: {family / 'rlhf'}\n    base: base\n    sampling: {{temperature: 0.7}}\n"
    )
    return path


def rate(store: Store, question: str, answer: str, rating: str, stage: str = "rlhf") -> None:
    record = chat_record(question, answer, stage=stage, sampling={"temperature": 1.0})
    store.record_generation(record)
    store.rate(record.id, rating, rater="tester")


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'stagechat.db'}"
    store = Store(url)
    for country in ("Kenya", "France", "Japan", "Peru"):
        rate(store, f"What is the capital of {country}?", "It is far away!", "up")
        rate(store, f"What is the capital of {country}?", "It is far away.", "down")
    store.close()
    return url


@pytest.mark.parametrize("method", ["kto", "dpo"])
def test_round_continues_the_adapter_and_registers_a_child_stage(family, registry_file, db, tmp_path, method):
    result = train_round(
        config=registry_file,
        from_stage="rlhf",
        name="rlhf-2",
        method=method,
        database_url=db,
        data_dir=tmp_path,
        min_ratings=4,
        plan=RoundPlan(method=method, steps=3, batch_size=4),
    )

    assert result.adapter_dir == tmp_path / "rounds" / "rlhf-2"
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    assert result.rows == (8 if method == "kto" else 4) and result.steps == 3
    registry = load_registry(registry_file, data_dir=tmp_path)  # still a valid registry
    new = registry.stages["rlhf-2"]
    assert new.adapter == str(result.adapter_dir)
    assert new.base == "rlhf" and registry.root("rlhf-2") == "base"  # parent rlhf, rides base's engine
    assert new.sampling.temperature == 0.7  # inherited from the from-stage
    assert list(registry.stages) == ["base", "rlhf", "rlhf-2"]
    assert registry_file.read_text().startswith("# the demo registry")  # appended, comments kept

    # The adapter continued rlhf's weights (same rank and targets), not a fresh LoRA.
    import json

    saved = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    start = json.loads((family / "rlhf" / "adapter_config.json").read_text())
    assert saved["r"] == start["r"] and set(saved["target_modules"]) == set(start["target_modules"])


def test_round_from_a_full_checkpoint_gets_a_fresh_lora(registry_file, db, tmp_path):
    result = train_round(
        config=registry_file,
        from_stage="base",
        name="base-kto",
        method="kto",
        database_url=db,
        data_dir=tmp_path,
        plan=RoundPlan(steps=2, batch_size=4, rank=8),
    )
    registry = load_registry(registry_file, data_dir=tmp_path)
    assert registry.stages["base-kto"].base == "base"
    assert (result.adapter_dir / "adapter_config.json").exists()


def test_too_few_ratings_changes_nothing(registry_file, db, tmp_path):
    before = registry_file.read_text()
    with pytest.raises(RoundError, match=r"only 8 usable kto rows.*--min-ratings is 50"):
        train_round(
            config=registry_file,
            from_stage="rlhf",
            name="rlhf-2",
            method="kto",
            database_url=db,
            data_dir=tmp_path,
            min_ratings=50,
        )
    assert registry_file.read_text() == before
    assert not (tmp_path / "rounds").exists()


def test_bad_names_and_stages_change_nothing(registry_file, db, tmp_path):
    before = registry_file.read_text()
    for kwargs, message in [
        (dict(from_stage="nope", name="x"), "not a stage"),
        (dict(from_stage="rlhf", name="rlhf"), "already exists"),
        (dict(from_stage="rlhf", name="../evil"), "use letters"),
    ]:
        with pytest.raises(RoundError, match=message):
            train_round(config=registry_file, method="kto", database_url=db, data_dir=tmp_path, **kwargs)
    assert registry_file.read_text() == before


# -- the registry writer ---------------------------------------------------------------------------


def test_add_stage_refuses_an_invalid_result_and_keeps_the_file(registry_file, tmp_path):
    before = registry_file.read_text()
    with pytest.raises(RegistryError, match="does not exist"):
        add_stage(registry_file, "ghost", {"adapter": str(tmp_path / "missing"), "base": "rlhf"})
    with pytest.raises(RegistryError, match="base 'nope' is not a stage"):
        add_stage(registry_file, "orphan", {"adapter": str(registry_file.parent), "base": "nope"})
    with pytest.raises(RegistryError, match="already exists"):
        add_stage(registry_file, "base", {"model": str(registry_file.parent)})
    assert registry_file.read_text() == before
    assert [p.name for p in registry_file.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_add_stage_rewrites_flow_style_files_validly(family, tmp_path):
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump({"stages": {"base": {"model": str(family / "base")}}}, default_flow_style=True))
    add_stage(path, "rlhf", {"adapter": str(family / "rlhf"), "base": "base"})
    assert set(load_registry(path).stages) == {"base", "rlhf"}
