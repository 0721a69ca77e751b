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


SHIPPED_DEMO_FAMILY = REPO_ROOT / "models" / "demo" / "family"


def default_demo_family() -> Path:
    """`STAGECHAT_DEMO_FAMILY`, else the trained family the repository ships (`models/demo/family/`)."""
    return Path(os.environ.get("STAGECHAT_DEMO_FAMILY") or SHIPPED_DEMO_FAMILY).resolve()


# Numeric settings read from `STAGECHAT_<NAME>` (and `--<name>` flags of `stagechat serve`).
LIMIT_FIELDS = {
    "max_body_bytes": int,
    "max_concurrent_per_key": int,
    "tokens_per_minute_per_key": int,
    "max_queued_requests": int,
    "ws_max_frame_bytes": int,
    "ws_frames_per_second": float,
}


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
    # Limits against overload and bad input (0 = off); see server/limits.py and server/body_limit.py.
    max_body_bytes: int = 4 * 1024 * 1024  # HTTP request bodies; 413 beyond
    max_concurrent_per_key: int = 0  # generations in flight per API key (or per anonymous caller)
    tokens_per_minute_per_key: int = 0  # prompt + max_tokens × n, per key, over a sliding minute
    max_queued_requests: int = 1024  # generations in flight server-wide, running or waiting
    ws_max_frame_bytes: int = 4 * 1024 * 1024  # one WebSocket text frame; error frame beyond
    ws_frames_per_second: float = 50.0  # per socket, with a burst of 2 seconds' worth; error frame beyond

    @property
    def limits(self):
        from server.limits import Limits

        return Limits(self.max_concurrent_per_key, self.tokens_per_minute_per_key, self.max_queued_requests)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'stagechat.db'}"

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        env = os.environ
        keys = frozenset(k for k in env.get("STAGECHAT_API_KEYS", "").split(",") if k)
        values = dict(
            database_url=env.get("STAGECHAT_DATABASE_URL") or None,
            api_keys=keys,
            admin_key=env.get("STAGECHAT_ADMIN_KEY") or None,
            log_prompts=env.get("STAGECHAT_LOG_PROMPTS", "1") not in ("0", "false", "no"),
            allow_lossy_speculation=env.get("STAGECHAT_ALLOW_LOSSY_SPECULATION", "0") in ("1", "true", "yes"),
        )
        for name, kind in LIMIT_FIELDS.items():
            raw = env.get(f"STAGECHAT_{name.upper()}")
            if raw:
                values[name] = kind(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
