"""One round's lifecycle, shared by every trainer that adds to a registry and by the demo build.

A round: check the name → train into a staged `.<name>.partial` folder → write its meta file → rename
the folder into place → register it in the registry file (a stage, or a reward model) → optionally ask a
running server to reload. Anything that fails before the registry write leaves the registry and the
data folder as they were: the partial folder is removed, and a folder whose registration fails is
removed too, so no half-registered round stays behind. A full disk or read-only storage on the way is
a `RoundError` naming the cause and the path (`server.storage_errors`). A failed reload leaves the
round registered (the next reload or restart serves it) and says so.

`stage_folder` is the staged-folder step alone, which the demo build uses for its steps (which are not
registered: the shipped registry names them). This module knows folders, the registry file's writer
and the reload endpoint; it knows nothing about training, data or HTTP serving.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
ROUND_META = "stagechat_round.json"
FOLDERS = {"stage": "rounds", "reward_model": "reward_models"}  # under the data dir, per kind of round


class RoundError(Exception):
    """The round cannot run; the message says why. Nothing was changed."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stage_folder(
    final: Path,
    work: Callable[[Path], T],
    meta: Callable[[T, float], dict[str, Any]],
    meta_file: str,
    *,
    partial: Path | None = None,
    replace: bool = False,
) -> tuple[T, float]:
    """Run `work` on an empty staged folder, write `meta(result, seconds)` into it as `meta_file`, then
    rename it to `final`; returns (result, seconds). On any failure the staged folder is removed and
    `final` is untouched. `replace`: an existing `final` is removed just before the rename."""
    partial = partial or final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
    began = time.perf_counter()
    try:
        partial.mkdir(parents=True)
        result = work(partial)
        seconds = time.perf_counter() - began
        (partial / meta_file).write_text(
            json.dumps(meta(result, seconds), indent=2, ensure_ascii=False, default=str) + "\n"
        )
        if replace:
            shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return result, seconds


@dataclass(frozen=True)
class Trained(Generic[T]):
    """What `Round.run` returns: the trainer's result, its seconds, and the server's reload answer."""

    result: T
    seconds: float
    reloaded: dict[str, Any] | None


@dataclass(frozen=True)
class Round:
    """A round whose name checked out (`Round.open`); `run` trains, registers and reloads it."""

    config: Path
    data_dir: Path
    registry: Any  # server.registry.Registry
    from_stage: str
    name: str
    kind: str  # "stage" | "reward_model"
    out_dir: Path

    @classmethod
    def open(cls, config: Path, data_dir: Path, from_stage: str, name: str, kind: str = "stage") -> Round:
        """Load the registry and check the names; raises `RoundError` / `RegistryError`, changing nothing."""
        from server.registry import load_registry

        registry = load_registry(config, data_dir=data_dir)
        return cls(
            config,
            data_dir,
            registry,
            from_stage,
            name,
            kind,
            check_name(registry, config, from_stage, name, data_dir, FOLDERS[kind]),
        )

    @property
    def checkpoint(self) -> str:
        """The from-stage's root checkpoint, which the round trains on."""
        return self.registry.stages[self.registry.root(self.from_stage)].model

    @property
    def start_adapter(self) -> str | None:
        """The from-stage's adapter (continued), or None for a full checkpoint."""
        return self.registry.stages[self.from_stage].adapter

    def run(
        self,
        work: Callable[[Path], T],
        meta: Callable[[T, float], dict[str, Any]],
        *,
        description: str | Callable[[T], str],
        meta_file: str = ROUND_META,
        server: str | None = None,
        admin_key: str | None = None,
    ) -> Trained[T]:
        """Train into the staged folder (`work(folder)`), write `meta(result, seconds)` and a time stamp,
        move it into place, register it (`description`, or `description(result)`, in the registry), reload
        `server` when given. Raises `RoundError` / `RegistryError`; only a failed reload leaves the round
        registered."""

        def with_time(result: T, seconds: float) -> dict[str, Any]:
            return {**meta(result, seconds), "created_at": now()}

        try:
            result, seconds = stage_folder(self.out_dir, work, with_time, meta_file)
            self.register(description(result) if callable(description) else description)
        except Exception as exc:  # noqa: BLE001 - re-raised: as a RoundError when storage refused the write
            raise storage_round_error(exc, self.name, self.out_dir) or exc  # noqa: B904 - exc itself, or its explanation
        log.info("registered %s %s (%.1f s)", self.kind.replace("_", " "), self.name, seconds)
        return Trained(result, seconds, reload_server(server, admin_key) if server else None)

    def register(self, description: str) -> None:
        """Add the trained folder to the registry file; on failure the folder is removed, so no
        unregistered round stays behind."""
        from server.registry_file import add_reward_model, add_stage

        try:
            if self.kind == "reward_model":
                add_reward_model(
                    self.config,
                    self.name,
                    {"model": str(self.out_dir), "description": description},
                    data_dir=self.data_dir,
                )
            else:
                add_stage(self.config, self.name, self.stage_entry(description), data_dir=self.data_dir)
        except Exception:
            shutil.rmtree(self.out_dir, ignore_errors=True)
            raise

    def stage_entry(self, description: str) -> dict[str, Any]:
        """The new stage: the round's adapter on the from-stage, inheriting its sampling defaults and
        reward model (as written in the file, so relative paths stay relative)."""
        import yaml

        raw = yaml.safe_load(Path(self.config).read_text())["stages"][self.from_stage]
        entry: dict[str, Any] = {"adapter": str(self.out_dir), "base": self.from_stage, "description": description}
        for key in ("sampling", "reward_model"):
            if raw.get(key):
                entry[key] = raw[key]
        return entry


def storage_round_error(exc: BaseException, name: str, folder: Path) -> RoundError | None:
    """A full disk or read-only storage behind `exc` as a one-line `RoundError` naming the path, else None.
    By then `stage_folder` and `register` have removed what they wrote: nothing is half-registered."""
    from server.storage_errors import storage_fault

    fault = storage_fault(exc, str(folder))  # a failed write() names no file: the round's folder
    if fault is None:
        return None
    error = RoundError(f"round '{name}' could not be written: {fault.describe()}; nothing was registered")
    error.__cause__ = exc
    return error


def check_name(registry, config: Path, from_stage: str, name: str, data_dir: Path, folder: str = "rounds") -> Path:
    """`{data_dir}/<folder>/<name>` once the names check out; raises `RoundError` otherwise."""
    from server.registry_file import STAGE_NAME

    if from_stage not in registry.stages:
        raise RoundError(f"--from-stage '{from_stage}' is not a stage of {config} ({', '.join(registry.stages)})")
    if name in registry.stages or name in registry.reward_models:
        raise RoundError(
            f"'{name}' already exists in {config}: it already names a stage or reward model; pick another --name"
        )
    if not STAGE_NAME.match(name):
        raise RoundError(f"--name {name!r}: use letters, digits, '.', '_' or '-'")
    out_dir = data_dir / folder / name
    if out_dir.exists():
        raise RoundError(f"{out_dir} already exists; pick another --name or remove it")
    return out_dir


def reload_server(url: str, admin_key: str | None = None) -> dict[str, Any]:
    """POST /v1/admin/reload on a running server; returns its answer."""
    import httpx

    headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
    # A reload may restart an engine (≈ 30 s) when the new adapter does not fit its LoRA slots.
    response = httpx.post(f"{url.rstrip('/')}/v1/admin/reload", headers=headers, timeout=300)
    if response.status_code != 200:
        raise RoundError(
            f"the stage is registered, but {url} did not reload: {response.status_code} {response.text[:500]}"
        )
    return response.json()
