from pathlib import Path

import pytest

from server.registry import RegistryError, load_registry


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stages.yaml"
    path.write_text(text)
    return path


def test_resolves_relative_paths_data_dir_and_hub_ids(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "data" / "lora").mkdir(parents=True)
    registry = load_registry(
        write(
            tmp_path,
            """
stages:
  base: {model: ./ckpt, description: local}
  sft: {adapter: "{data_dir}/lora", base: base}
  hub: {model: allenai/OLMo-2-0425-1B}
""",
        ),
        data_dir=tmp_path / "data",
    )
    assert registry.stages["base"].model == str(tmp_path / "ckpt")
    assert registry.stages["sft"].adapter == str(tmp_path / "data" / "lora")
    assert registry.stages["hub"].model == "allenai/OLMo-2-0425-1B"
    assert registry.root("sft") == "base" and registry.parent("sft") == "base"


def test_adapters_inherit_their_base_speculative_methods(tmp_path):
    registry = load_registry(
        write(
            tmp_path,
            """
stages:
  base: {model: org/base, speculative: {ngram: {method: ngram, num_speculative_tokens: 2}}}
  sft: {adapter: org/sft, base: base}
""",
        ),
        check_paths=False,
    )
    assert list(registry.speculative_methods("sft")) == ["ngram"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stages:\n  base: {model: ./missing}\n", "stage 'base': model path"),
        ("stages:\n  base: {model: org/m, colour: red}\n", "stages.base.colour"),
        ("stages:\n  sft: {adapter: org/a, base: nowhere}\n", "stage 'sft': base 'nowhere' is not a stage"),
        ("stages:\n  sft: {adapter: org/a}\n", "needs `base:`"),
        ("stages:\n  x: {model: org/m, adapter: org/a, base: x}\n", "either `model:`"),
        ("stages:\n  x: {model: org/m, default_speculative: eagle}\n", "not listed under speculative"),
        ("stages: {}\n", "empty"),
        ("stages: [\n", "not valid YAML"),
    ],
)
def test_bad_registries_are_clear_start_up_errors(tmp_path, text, message):
    with pytest.raises(RegistryError) as err:
        load_registry(write(tmp_path, text))
    assert message in str(err.value)
    assert "stages.yaml" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(RegistryError, match="not found"):
        load_registry(tmp_path / "nope.yaml")
