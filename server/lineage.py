"""Lineage: the rounds of a family (base → sft → rlhf → rlhf-2 …) side by side — human strength with
its interval, mean reward, KL to the parent — for `GET /v1/leaderboard/lineage` and the Leaderboard tab.

What it knows: a family is a stage with no parent in the registry and everything descending from it
through `base:` (each round registers its from-stage as `base:`, `models/rounds.py`), listed parent
before child, siblings in registry order. Per stage it joins three sources:

- human strength: the raw Bradley–Terry fit of the leaderboard (`server/leaderboard.py`), with its
  bootstrap 95% interval;
- mean reward: each reward model's mean score of the stage's judged answers, from the reward-agreement
  figures (`server/reward_agreement.py`, cached scores only);
- the round's own record, read from its folder: `stagechat_round.json` (`stagechat rlhf-round` and the
  preference rounds) or `stagechat_demo_rl.json` (the demo build), and `training_log.csv` — method,
  reward model, reward before and after, and the per-step history (reward, KL). KL to the parent is
  the last KL the RL trainer logged (TRL's KL to the starting policy, which is the parent the round
  was registered on); else, for the demo family, its manifest's evaluation `kl_to_sft` when the parent
  is the family's sft folder; else null with `kl_source` saying why (a full checkpoint has no parent;
  a DPO/KTO round logs no KL; a stage without a local folder has no record);
- `eval`: for a stage of a family with a manifest (the demo's), `stagechat eval`'s figures for it —
  mean reward on the evaluation prompts, KL to sft, accuracy — a second mean reward that needs no vote.

What it does not know: HTTP, SQL, or how the figures it joins are computed.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

ROUND_FILES = ("stagechat_round.json", "stagechat_demo_rl.json")  # models/rounds.py, models/demo/build.py
MANIFEST = "manifest.json"  # the demo family's (models/demo/manifest.py): its eval has kl_to_sft
_meta_cache: dict[tuple[str, float], dict[str, Any] | None] = {}


def families(registry) -> list[list[str]]:
    """Every family's stages, root first, each parent before its children (siblings in registry order)."""
    children: dict[str | None, list[str]] = {}
    for name in registry.stages:
        parent = registry.parent(name)
        children.setdefault(parent if parent in registry.stages else None, []).append(name)
    out = []
    for root in children.get(None, []):
        order, stack = [], [root]
        while stack:
            name = stack.pop()
            order.append(name)
            stack.extend(reversed(children.get(name, [])))
        out.append(order)
    return out


def _folder(registry, name: str) -> Path | None:
    stage = registry.stages[name]
    path = stage.adapter or stage.model
    if path is None or not path.startswith("/"):
        return None  # remote, or a Hugging Face id: no local record
    return Path(path)


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def round_record(folder: Path | None) -> dict[str, Any] | None:
    """The round's record from its folder (None when there is none); cached by file modification time."""
    if folder is None:
        return None
    meta_path = next((folder / f for f in ROUND_FILES if (folder / f).is_file()), None)
    log_path = folder / "training_log.csv"
    if meta_path is None and not log_path.is_file():
        return None
    key = (str(folder), max(p.stat().st_mtime for p in (meta_path, log_path) if p is not None and p.is_file()))
    if key not in _meta_cache:
        _meta_cache[key] = _read_record(meta_path, log_path)
    return _meta_cache[key]


def _read_record(meta_path: Path | None, log_path: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if meta_path is not None:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
    rows = meta.get("rows") if isinstance(meta.get("rows"), list) else None
    if rows is None and log_path.is_file():
        try:
            with log_path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError:
            rows = None
    history = [
        {"step": int(_number(r.get("step")) or 0), "reward": _number(r.get("reward")), "kl": _number(r.get("kl"))}
        for r in rows or []
        if isinstance(r, dict)
    ]
    final_kl = _number(meta.get("final_kl"))
    if final_kl is None:
        final_kl = next((h["kl"] for h in reversed(history) if h["kl"] is not None), None)
    return {
        "file": meta_path.name if meta_path else log_path.name,
        "method": meta.get("method") or ("rloo" if meta_path and meta_path.name == "stagechat_demo_rl.json" else None),
        "from_stage": meta.get("from_stage"),
        "reward_model": meta.get("reward_model"),
        "reward_before": _number(meta.get("reward_before")),
        "reward_after": _number(meta.get("reward_after")),
        "final_kl": final_kl,
        "steps": len(history) or meta.get("steps"),
        "history": history,
    }


def manifest_eval(folder: Path | None) -> dict[str, Any] | None:
    """The demo manifest's evaluation of the stage in `folder` (`stagechat eval`'s figures for it), if any."""
    if folder is None:
        return None
    path = folder.parent / MANIFEST
    try:
        key = (str(path), path.stat().st_mtime)
    except OSError:
        return None
    if key not in _meta_cache:
        try:
            _meta_cache[key] = json.loads(path.read_text())
        except (OSError, ValueError):
            _meta_cache[key] = None
    stages = ((_meta_cache[key] or {}).get("eval") or {}).get("stages") or {}
    figures = stages.get(folder.name)
    if not isinstance(figures, dict):
        return None
    return {k: _number(figures.get(k)) for k in ("mean_reward", "kl_to_sft", "qa_accuracy")}


def _manifest_kl(registry, name: str, parent: str) -> float | None:
    """The demo family's evaluation KL(stage ‖ sft), when the parent is that family's sft folder."""
    mine, theirs = _folder(registry, name), _folder(registry, parent)
    if mine is None or theirs is None or theirs != mine.parent / "sft":
        return None
    return (manifest_eval(mine) or {}).get("kl_to_sft")


def _kl(registry, name: str, parent: str | None, record: dict[str, Any] | None) -> tuple[float | None, str]:
    """(KL to the parent, its source — or why there is none)."""
    if parent is None:
        return None, "missing: a family's root has no parent"
    if record is not None and record["final_kl"] is not None and record["from_stage"] in (None, parent):
        return record["final_kl"], f"{record['file']}: the RL trainer's last logged KL to the starting policy"
    if (value := _manifest_kl(registry, name, parent)) is not None:
        return value, f"{MANIFEST} eval: kl_to_sft, a Monte-Carlo estimate per answer"
    if record is None:
        return None, "missing: the stage's folder holds no round record (no stagechat_round.json)"
    return None, f"missing: the round ({record['method'] or 'unknown method'}) logged no KL"


def lineage(registry, board: dict[str, Any], agreement: dict[str, Any], *, family: str | None = None) -> dict[str, Any]:
    """`GET /v1/leaderboard/lineage`'s body from the leaderboard's body (`data`: strengths) and the
    reward-agreement figures; `family`: only the family holding this stage."""
    strength = {row["stage"]: row for row in board.get("data", [])}
    out = []
    for members in families(registry):
        if family is not None and family not in members:
            continue
        rows = []
        for name in members:
            parent = registry.parent(name)
            record = round_record(_folder(registry, name))
            kl, source = _kl(registry, name, parent, record)
            fit = strength.get(name)
            rewards = {
                rm: {
                    "mean_reward": figures["stages"].get(name, {}).get("mean_reward"),
                    "scored_answers": figures["stages"].get(name, {}).get("scored_answers", 0),
                    "agreement": figures["stages"].get(name, {}).get("agreement"),
                    "reward_hacking": figures["stages"].get(name, {}).get("reward_hacking"),
                }
                for rm, figures in agreement.get("models", {}).items()
            }
            rows.append(
                {
                    "stage": name,
                    "parent": parent,
                    "depth": len(_ancestors(registry, name)),
                    "strength": None if fit is None else fit["strength"],
                    "ci95": None if fit is None else fit["ci95"],
                    "votes": 0 if fit is None else fit["votes"],
                    "rewards": rewards,
                    "kl_to_parent": kl,
                    "kl_source": source,
                    "round": record,
                    "eval": manifest_eval(_folder(registry, name)),
                }
            )
        out.append({"root": members[0], "stages": rows})
    return {"object": "leaderboard.lineage", "families": out, "votes": board.get("votes")}


def _ancestors(registry, name: str) -> list[str]:
    seen = []
    while (name := registry.parent(name)) is not None and name not in seen:
        seen.append(name)
    return seen
