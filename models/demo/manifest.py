"""The shipped demo family and its manifest: what recipe made it, where, how long it took, how it scores.

The repository carries one trained family (`models/demo/family/`) so that `make run` serves it with
no training. `ship` copies a finished full build into that folder, without its regenerable training
data, and writes `manifest.json` beside it. The recipe's hash covers what decides the weights: the
recipe version, the full size's shapes and training plans, and every training text (so a change to
the facts, the corpus or a plan changes the hash, and a test fails until the family is rebuilt and
shipped again). A change to training code must bump `build.RECIPE_VERSION`, as before.
This module knows the manifest's format; it trains nothing and serves nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import platform
import shutil
import time
from pathlib import Path

from models.demo.build import MARKER, RECIPE_VERSION, SIZES, STEPS, training_data

MANIFEST = "manifest.json"
# What a served family needs: every step but `data` (regenerable, 6.7 MB).
SHIPPED_STEPS = tuple(s for s in STEPS if s != "data")


def _sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def recipe(size: str = "full") -> dict:
    """What decides a build's weights, as plain data (its hash is `recipe_hash`)."""
    spec = SIZES[size]
    return {
        "recipe_version": RECIPE_VERSION,
        "size": size,
        "plans": dataclasses.asdict(spec),
        "training_data_sha256": _sha256(training_data(spec)),
    }


def recipe_hash(size: str = "full") -> str:
    return _sha256(recipe(size))


def cpu_description() -> dict:
    """The CPU a family was built on: its model name and the vector extensions that change results."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    return {"model": model, "machine": platform.machine(), "extensions": [f for f in wanted if f in flags]}


def ship(built: Path, family: Path, *, evaluation: dict | None = None, quick: dict | None = None) -> dict:
    """Copy the full build in `built` into `family` (replacing it) and write its manifest; returns it.

    Refused unless every step is a finished full build of this recipe version and its data folder holds
    exactly today's training text: a build resumed after a corpus change without a version bump keeps
    its old steps, and must not ship under the new recipe's hash."""
    built, family = Path(built), Path(family)
    missing = [s for s in SHIPPED_STEPS if not (built / s / MARKER).exists()]
    if missing:
        raise ValueError(f"{built} is not a complete build: no finished {', '.join(missing)}")
    markers = {s: json.loads((built / s / MARKER).read_text()) for s in STEPS if (built / s / MARKER).exists()}
    for s in SHIPPED_STEPS:
        if markers[s].get("size") != "full" or markers[s].get("recipe") != RECIPE_VERSION:
            raise ValueError(f"{built / s} was built by another recipe or size ({markers[s]}); rebuild it first")
    data = [path for path in (built / "data").glob("*.json") if path.name != MARKER]
    trained_on = {path.stem: json.loads(path.read_text()) for path in data}
    if _sha256(trained_on) != recipe()["training_data_sha256"]:
        raise ValueError(f"{built} was trained on other data than the recipe makes today: build it with --rebuild")
    staging = family.with_name(family.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for s in SHIPPED_STEPS:
        shutil.copytree(built / s, staging / s)
    manifest = {
        "recipe_hash": recipe_hash(),
        "recipe_version": RECIPE_VERSION,
        "built_on": cpu_description(),
        "shipped_at": time.strftime("%Y-%m-%d"),
        "step_seconds": {s: done.get("seconds") for s, done in markers.items()},
        "bytes": {s: sum(f.stat().st_size for f in (staging / s).rglob("*") if f.is_file()) for s in SHIPPED_STEPS},
        "eval": evaluation,  # `stagechat eval --json` on the test split
        "quick_check": quick,
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(family, ignore_errors=True)
    staging.rename(family)
    return manifest


def read_manifest(family: Path) -> dict:
    return json.loads((Path(family) / MANIFEST).read_text())


# A quick subset of the eval that a test can re-run in a minute: the first countries of the test
# split and a few fictional ones, every stage, greedy decoding. Shipping records its figures; the
# test serves the shipped family and must find the same (up to float noise across CPUs).
QUICK_COUNTRIES, QUICK_FICTIONAL = 6, 2
QUICK_FIGURES = (
    "qa_accuracy",
    "assistant_voice_rate",
    "followup_accuracy",
    "hallucination_rate",
    "preferred_style_rate",
    "completion_accuracy",
    "draft_acceptance_rate",
)


def evaluate_quick(config: Path) -> dict[str, dict[str, float | None]]:
    """The quick subset's figures per stage of the registry `config`, through vLLM engines started here."""
    return quick_figures(asyncio.run(quick_reports(config)))


async def quick_reports(config: Path) -> dict:
    """The quick subset's eval reports (`models.eval.EvalReport`) per stage of the registry `config`."""
    from models.demo.corpus import load_countries
    from models.eval import run_eval, serving_one_engine_at_a_time
    from server.registry import load_registry

    async with serving_one_engine_at_a_time(load_registry(config)) as service:
        return await run_eval(service, countries=tuple(load_countries()[:QUICK_COUNTRIES]), fictional=QUICK_FICTIONAL)


def quick_figures(reports: dict) -> dict[str, dict[str, float | None]]:
    """What the manifest records of the quick subset's reports."""
    return {
        stage: {**{k: getattr(r, k) for k in QUICK_FIGURES}, **{f"accuracy.{k}": v for k, v in r.accuracy.items()}}
        for stage, r in reports.items()
    }
