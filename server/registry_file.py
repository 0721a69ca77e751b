"""Writing a registry file: add one stage, keep the file valid, never leave half a file behind.

What it knows: the YAML text of a registry file and `server.registry.load_registry`, which is the
only judge of validity. `add_stage` (and `add_reward_model`, under `reward_models:`) appends the
new entry's lines when that keeps
the file's comments and layout and parses to the intended data, otherwise it rewrites the file from
the parsed data (comments are then lost). Either way the new text is validated as a registry (paths
included), then swapped in with an atomic rename, under an exclusive lock so two writers cannot
lose each other's stage. It knows nothing about engines, training or servers.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from server.registry import RegistryError, load_registry

STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # also a safe folder name and model id


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # A sidecar lock file: the registry itself is replaced by rename, so locking it would not hold.
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _appended(text: str, raw: dict[str, Any], name: str, stage: dict[str, Any], section: str = "stages") -> str | None:
    """`text` with the entry's lines appended, if `section:` is the last block (or absent) and that parses right."""
    entries = raw.get(section) or {}
    block = yaml.safe_dump({name: stage}, sort_keys=False, default_flow_style=False, allow_unicode=True)
    if entries:
        first = next(iter(entries))
        match = re.search(rf"^([ \t]+){re.escape(first)}\s*:", text, flags=re.M)
        if match is None:
            return None
        indent, head = match.group(1), ""
    else:
        indent, head = "  ", f"{section}:\n"
    lines = "".join(f"{indent}{line}" if line.strip() else line for line in block.splitlines(keepends=True))
    candidate = text + ("" if text.endswith("\n") else "\n") + head + lines
    expected = {**raw, section: {**entries, name: stage}}
    try:
        return candidate if yaml.safe_load(candidate) == expected else None
    except yaml.YAMLError:
        return None


def add_stage(path: str | Path, name: str, stage: dict[str, Any], *, data_dir: Path | None = None) -> None:
    """Add stage `name` (plain registry data, e.g. {"adapter": ..., "base": ...}) to the registry file.

    Raises `RegistryError` (and leaves the file untouched) when the name is taken or malformed, or the
    result would not be a valid registry."""
    _add_entry(Path(path), "stages", "stage", name, stage, data_dir)


def add_reward_model(path: str | Path, name: str, entry: dict[str, Any], *, data_dir: Path | None = None) -> None:
    """Add reward model `name` ({"model": ..., "description": ...}) under `reward_models:`, like `add_stage`."""
    _add_entry(Path(path), "reward_models", "reward model", name, entry, data_dir)


def _add_entry(path: Path, section: str, what: str, name: str, entry: dict[str, Any], data_dir: Path | None) -> None:
    if not STAGE_NAME.match(name):
        raise RegistryError(f"{path}: {what} name {name!r} must be letters, digits, '.', '_' or '-' (≤ 64)")
    with _locked(path):
        load_registry(path, data_dir=data_dir, check_paths=False)  # the current file must be valid to start from
        text = path.read_text()
        raw = yaml.safe_load(text)
        if name in (raw.get("stages") or {}) or name in (raw.get("reward_models") or {}):
            raise RegistryError(f"{path}: '{name}' already exists (as a stage or reward model)")
        new_text = _appended(text, raw, name, entry, section) or yaml.safe_dump(
            {**raw, section: {**(raw.get(section) or {}), name: entry}}, sort_keys=False, allow_unicode=True
        )
        # The temporary file sits beside the registry: same folder (relative paths resolve the
        # same while validating) and same file system (the rename is atomic).
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w") as f:
                f.write(new_text)
                f.flush()
                os.fsync(f.fileno())
            load_registry(tmp, data_dir=data_dir)  # raises RegistryError: the old file stays
            os.chmod(tmp, path.stat().st_mode & 0o7777)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
