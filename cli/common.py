"""What the subcommands share: the default registry file, error and reload reporting."""

from __future__ import annotations

import sys
from typing import Any

from server.settings import REPO_ROOT

DEFAULT_CONFIG = REPO_ROOT / "models" / "stages.yaml"


def fail(command: str | None, error: Exception | str, code: int = 2) -> int:
    """Say why `stagechat <command>` (or `stagechat`, command None) stopped, on stderr; returns the exit code."""
    print(f"stagechat {command}: {error}" if command else f"stagechat: {error}", file=sys.stderr)
    return code


def print_reload(server: str | None, reloaded: dict[str, Any] | None, *, added: bool = True) -> None:
    """How the new stage or reward model gets served: the server's reload answer, or how to ask for one."""
    if reloaded is not None:
        print(f"{server} reloaded" + (f": added {', '.join(reloaded['added']) or 'nothing'}" if added else ""))
    else:
        print("serve it: POST /v1/admin/reload on a running server (or pass --server URL)")
