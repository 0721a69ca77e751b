"""The stage registry: which stages exist and what serves each (a `stages.yaml` file, as plain data).

A stage is either a full checkpoint (`model:` a path or a Hugging Face id) or a LoRA adapter on
another stage's checkpoint (`adapter:` a path, `base:` a stage). Paths may start with `{data_dir}`
(the data directory, `STAGECHAT_DATA_DIR` or `data/`) or `{demo_family}` (the demo family served:
`STAGECHAT_DEMO_FAMILY`, else the one shipped in `models/demo/family/`), and relative paths resolve against the
registry file's folder. A top-level `reward_models:` section names reward models (name →
`{model, description}`; a stage's optional `reward_model:` picks one to score its answers by
default). This module validates and resolves; it knows nothing about engines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server.settings import default_data_dir, default_demo_family

SPECULATIVE_OFF = "off"


class RegistryError(ValueError):
    """The registry file is unusable; the message names the file and the stage."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingDefaults(_Strict):
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)


class RemoteSpec(_Strict):
    """An OpenAI-compatible vLLM server that serves a stage (or one speculative variant of it)."""

    url: str  # the server's API root, e.g. http://gpu-node:8000/v1
    model: str  # the model name the server serves (`--served-model-name`, or a `--lora-modules` name)
    api_key_env: str | None = None  # the environment variable holding the server's API key
    tokenizer: str | None = None  # a path or Hugging Face id; default: the base stage's, else `model`
    timeout: float = Field(300.0, gt=0)  # seconds to wait for the server's next bytes before a 504


class Stage(_Strict):
    model: str | None = None
    adapter: str | None = None
    remote: RemoteSpec | None = None  # served by a remote vLLM server instead of an in-process engine
    base: str | None = None
    description: str = ""
    sampling: SamplingDefaults = SamplingDefaults()
    # method name -> vLLM speculative config (e.g. {"method": "ngram", "num_speculative_tokens": 4})
    speculative: dict[str, dict[str, Any]] = {}
    default_speculative: str = SPECULATIVE_OFF
    reward_model: str | None = None  # a `reward_models:` name that scores this stage's answers by default
    # a vLLM tool-call parser (e.g. "hermes") for `tools` in chat; without one the stage refuses tools
    tool_parser: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Stage:
        if sum(x is not None for x in (self.model, self.adapter, self.remote)) != 1:
            raise ValueError("give either `model:` (a checkpoint), `adapter:` with `base:`, or `remote:` (a server)")
        if self.adapter is not None and self.base is None:
            raise ValueError("an `adapter:` stage needs `base:`, the stage whose checkpoint it adapts")
        if self.model is not None and self.base is not None:
            raise ValueError("`base:` belongs to adapter stages (and remote ones, as their parent)")
        for method, config in self.speculative.items():
            if self.remote is not None and set(config) != {"remote"}:
                raise ValueError(
                    f"speculative '{method}' of a remote stage needs `remote:` (its server) and "
                    "nothing else: speculation is configured on that server"
                )
            if "remote" in config:
                if self.remote is None:
                    raise ValueError(f"speculative '{method}': `remote:` belongs to remote stages only")
                config["remote"] = RemoteSpec.model_validate(config["remote"])
        if SPECULATIVE_OFF in self.speculative:
            raise ValueError(f"'{SPECULATIVE_OFF}' is reserved and cannot name a speculative method")
        if self.default_speculative not in (SPECULATIVE_OFF, *self.speculative):
            raise ValueError(f"default_speculative '{self.default_speculative}' is not listed under speculative")
        return self


class RewardModel(_Strict):
    """A reward model: a sequence-classification checkpoint with one label (`stagechat reward-model`)."""

    model: str
    description: str = ""


class Registry(_Strict):
    engine: dict[str, Any] = {}  # passed to vLLM's engine arguments as is
    stages: dict[str, Stage]
    reward_models: dict[str, RewardModel] = {}

    @model_validator(mode="after")
    def _bases_known(self) -> Registry:
        if not self.stages:
            raise ValueError("`stages:` is empty")
        for name, stage in self.stages.items():
            seen = {name}
            while stage.adapter is not None:
                if stage.base not in self.stages:
                    raise ValueError(f"stage '{name}': base '{stage.base}' is not a stage")
                if stage.base in seen:
                    raise ValueError(f"stage '{name}': adapter bases form a cycle")
                seen.add(stage.base)
                stage = self.stages[stage.base]
            if stage.remote is not None and stage.base is not None and stage.base not in self.stages:
                raise ValueError(f"stage '{name}': base '{stage.base}' is not a stage")
        for name in self.reward_models:
            if name in self.stages:
                raise ValueError(f"'{name}' names both a stage and a reward model; a model id must be unique")
        for name, stage in self.stages.items():
            if stage.reward_model is not None and stage.reward_model not in self.reward_models:
                raise ValueError(f"stage '{name}': reward_model '{stage.reward_model}' is not under `reward_models:`")
        return self

    def checkpoint(self, name: str) -> str:
        """What the engine of root stage `name` serves: its checkpoint, or its remote server and model."""
        stage = self.stages[name]
        return stage.model if stage.remote is None else f"{stage.remote.url}#{stage.remote.model}"

    def remote_for(self, name: str, method: str | None = None) -> RemoteSpec | None:
        """The server of remote stage `name` (for speculative `method`: that method's server), with
        its tokenizer filled in: its own, else its `base:` stage's, else the served model's name."""
        stage = self.stages[name]
        if stage.remote is None:
            return None
        remote = stage.speculative[method]["remote"] if method else stage.remote
        tokenizer, seen = remote.tokenizer or stage.remote.tokenizer, {name}
        while tokenizer is None and stage.base is not None and stage.base not in seen:
            seen.add(stage.base)
            stage = self.stages[stage.base]
            tokenizer = stage.model or (stage.remote.tokenizer if stage.remote else None)
        return remote.model_copy(update={"tokenizer": tokenizer or remote.model})

    def root(self, name: str) -> str:
        """The full-checkpoint (or remote) stage under `name` (itself when it is one)."""
        while self.stages[name].adapter is not None:
            name = self.stages[name].base
        return name

    def parent(self, name: str) -> str | None:
        return self.stages[name].base

    def speculative_methods(self, name: str) -> dict[str, dict[str, Any]]:
        """Methods a stage offers: its own list, else its base's (an adapter rides that engine)."""
        while not self.stages[name].speculative and self.stages[name].adapter is not None:
            name = self.stages[name].base
        return self.stages[name].speculative


def _resolve(value: str, folder: Path, data_dir: Path, demo_family: Path) -> str:
    value = value.replace("{demo_family}", str(demo_family))
    expanded = os.path.expanduser(value.replace("{data_dir}", str(data_dir)))
    path = Path(expanded)
    if path.is_absolute():
        return str(path)
    local = folder / path
    if value.startswith(".") or local.exists() or "/" not in value:
        return str(local.resolve())
    return value  # a Hugging Face id such as "allenai/OLMo-2-0425-1B"


def _is_local(value: str) -> bool:
    return value.startswith("/")


def load_registry(
    path: str | Path, *, data_dir: Path | None = None, demo_family: Path | None = None, check_paths: bool = True
) -> Registry:
    """Read, validate and resolve a registry file. `check_paths` makes every local path required."""
    path = Path(path)
    data_dir = data_dir or default_data_dir()
    demo_family = demo_family or default_demo_family()
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RegistryError(f"{path}: registry file not found") from None
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from None
    try:
        registry = Registry.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}" for err in exc.errors())
        raise RegistryError(f"{path}: {problems}") from None

    folder = path.parent.resolve()
    where = (data_dir, demo_family)
    for name, stage in registry.stages.items():
        for key in ("model", "adapter"):
            value = getattr(stage, key)
            if value is None:
                continue
            resolved = _resolve(value, folder, *where)
            if check_paths and _is_local(resolved) and not Path(resolved).exists():
                raise RegistryError(f"{path}: stage '{name}': {key} path {resolved} does not exist")
            setattr(stage, key, resolved)
        remotes = [stage.remote] + [c["remote"] for c in stage.speculative.values() if "remote" in c]
        for remote in remotes:
            if remote is not None and remote.tokenizer is not None:
                remote.tokenizer = _resolve(remote.tokenizer, folder, *where)
        for method, config in stage.speculative.items():
            if isinstance(config.get("model"), str):
                resolved = _resolve(config["model"], folder, *where)
                if check_paths and _is_local(resolved) and not Path(resolved).exists():
                    raise RegistryError(
                        f"{path}: stage '{name}': speculative '{method}' model {resolved} does not exist"
                    )
                config["model"] = resolved
    for name, rm in registry.reward_models.items():
        resolved = _resolve(rm.model, folder, *where)
        if check_paths and _is_local(resolved) and not Path(resolved).exists():
            raise RegistryError(f"{path}: reward model '{name}': model path {resolved} does not exist")
        rm.model = resolved
    return registry
