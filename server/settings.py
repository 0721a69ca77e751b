"""Server settings as plain data: where data lives, which database, which keys.

Read once from the environment (and CLI flags) at start-up; nothing here touches the disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_data_dir() -> Path:
    """`STAGECHAT_DATA_DIR`, else `data/` at the repository root."""
    return Path(os.environ.get("STAGECHAT_DATA_DIR") or REPO_ROOT / "data").resolve()


@dataclass(frozen=True)
class Settings:
    registry_path: Path = REPO_ROOT / "models" / "stages.yaml"
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str | None = None  # None: a SQLite file in data_dir
    api_keys: frozenset[str] = frozenset()  # empty: no key needed
    admin_key: str | None = None  # guards export and admin endpoints when set
    log_prompts: bool = True  # off: prompts and completions are not stored; ratings carry their text
    # serve speculation that is known to change sampled output (see VllmEngine.lossy_when_sampling)
    allow_lossy_speculation: bool = False

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'stagechat.db'}"

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        env = os.environ
        keys = frozenset(k for k in env.get("STAGECHAT_API_KEYS", "").split(",") if k)
        values = dict(
            database_url=env.get("STAGECHAT_DATABASE_URL") or None,
            api_keys=keys,
            admin_key=env.get("STAGECHAT_ADMIN_KEY") or None,
            log_prompts=env.get("STAGECHAT_LOG_PROMPTS", "1") not in ("0", "false", "no"),
            allow_lossy_speculation=env.get("STAGECHAT_ALLOW_LOSSY_SPECULATION", "0") in ("1", "true", "yes"),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
