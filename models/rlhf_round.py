"""`stagechat rlhf-round`: train the next RLHF stage on the collected ratings, register it, serve it.

Steps: export the store's feedback as a TRL dataset (`server.export`, kto or dpo) → check there are
at least `--min-ratings` usable rows → train a LoRA adapter with TRL's KTOTrainer or DPOTrainer,
starting from the from-stage (an adapter stage is loaded as a trainable PeftModel and continued,
TRL keeping its starting weights as the frozen reference; a full checkpoint gets a fresh LoRA) →
save it to `{data_dir}/rounds/<name>` → add the stage to the registry file (`server.registry_file`)
→ optionally ask a running server to reload (`POST /v1/admin/reload`).

The new stage is `adapter: {data_dir}/rounds/<name>` with `base: <from-stage>`: `base:` is the
stage's parent (what `/v1/models` reports as `parent`), and the pool serves it on the engine of the
from-stage's root checkpoint. The adapter itself is a full LoRA on that root checkpoint, as vLLM
needs, not a delta on the from-stage. It inherits the from-stage's sampling defaults.

`--method rloo` (online RL against a reward model) lives in `models.rl_round`; this module dispatches
to it and shares the naming, registration and reload steps with it.

Anything that fails before the registry write leaves the registry and the rounds folder as they were.
This module knows the round's plan and TRL; it knows nothing about HTTP serving or SQL.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# What vLLM's Llama-family models accept as LoRA targets (no embeddings, no lm_head).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class RoundError(Exception):
    """The round cannot run; the message says why. Nothing was changed."""


@dataclass(frozen=True)
class RoundPlan:
    """Training settings. Steps default to a few passes over the rows, bounded for a CPU."""

    method: str = "kto"
    steps: int | None = None  # None: ≈ 4 epochs, between 20 and 200 steps
    batch_size: int = 8
    lr: float = 5e-4
    beta: float = 0.1
    rank: int = 16  # a fresh LoRA only; a continued adapter keeps its own rank
    max_length: int = 160
    seed: int = 0

    def total_steps(self, rows: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(20, min(200, 4 * -(-rows // self.batch_size)))


@dataclass(frozen=True)
class RoundResult:
    name: str
    adapter_dir: Path
    rows: int
    steps: int
    train_seconds: float
    loss: float
    reloaded: dict[str, Any] | None = None


# -- data ----------------------------------------------------------------------------------------


def usable_rows(database_url: str, method: str) -> list[dict[str, Any]]:
    """The store's feedback as TRL rows of `method` (kto: rated answers; dpo: chosen/rejected pairs)."""
    from server.export import examples
    from server.store import Store

    store = Store(database_url)
    try:
        return list(examples(store, method))
    finally:
        store.close()


# -- training ------------------------------------------------------------------------------------


def train_adapter(checkpoint: str, start_adapter: str | None, rows: list[dict[str, Any]], plan: RoundPlan,
                  out_dir: Path) -> tuple[float, int]:
    """Train a LoRA adapter on `checkpoint` (continuing `start_adapter` when given); returns (loss, steps)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(plan.seed)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)  # adapters share their checkpoint's tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    peft_config = None
    if start_adapter is not None:
        model = PeftModel.from_pretrained(model, start_adapter, is_trainable=True)
    else:
        present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        peft_config = LoraConfig(r=plan.rank, lora_alpha=2 * plan.rank, lora_dropout=0.0, bias="none",
                                 target_modules=[t for t in LORA_TARGETS if t in present], task_type="CAUSAL_LM")
    steps = plan.total_steps(len(rows))
    with tempfile.TemporaryDirectory() as scratch:
        common = dict(
            output_dir=scratch, max_steps=steps, per_device_train_batch_size=plan.batch_size,
            learning_rate=plan.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=min(5, steps // 10),
            logging_steps=max(1, steps // 10), save_strategy="no", report_to="none", use_cpu=True,
            bf16=False,  # fp32 is faster and stable on these CPUs
            gradient_checkpointing=False, dataloader_num_workers=0, seed=plan.seed, beta=plan.beta,
            max_length=plan.max_length, disable_tqdm=True,
        )
        if plan.method == "kto":
            from trl import KTOConfig, KTOTrainer

            good = sum(r["label"] for r in rows)
            bad = len(rows) - good
            # KTO's paper: weigh the rarer side up so desirable·n_good ≈ undesirable·n_bad.
            args = KTOConfig(**common, desirable_weight=max(1.0, bad / max(good, 1)),
                             undesirable_weight=max(1.0, good / max(bad, 1)))
            trainer = KTOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                 processing_class=tokenizer, peft_config=peft_config)
        else:
            from trl import DPOConfig, DPOTrainer

            # The SFT term on chosen answers keeps them likely: plain DPO can satisfy its margin by making
            # both answers unlikely, and then the tiny demo model drifts into text nobody rated.
            args = DPOConfig(**common, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0])
            trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                 processing_class=tokenizer, peft_config=peft_config)
        result = trainer.train()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Only the trained adapter: TRL adds a frozen "ref" copy when continuing one.
    trainer.model.save_pretrained(out_dir, selected_adapters=["default"], save_embedding_layers=False)
    tokenizer.save_pretrained(out_dir)
    return float(result.training_loss), steps


# -- the round -----------------------------------------------------------------------------------


def train_round(*, config: Path, from_stage: str, name: str, method: str, database_url: str,
                data_dir: Path, min_ratings: int = 1, plan: RoundPlan | None = None,
                server: str | None = None, admin_key: str | None = None) -> RoundResult:
    """Run one round (see the module docstring). Raises `RoundError` / `RegistryError`, changing nothing."""
    from server.registry import load_registry

    plan = plan or RoundPlan(method=method)
    registry = load_registry(config, data_dir=data_dir)
    out_dir = new_round_dir(registry, config, from_stage, name, data_dir)

    rows = usable_rows(database_url, method)
    if len(rows) < min_ratings:
        what = "rated answers (net up or down)" if method == "kto" else "chosen/rejected pairs"
        raise RoundError(f"only {len(rows)} usable {method} rows ({what}) in the store; "
                         f"--min-ratings is {min_ratings}. Rate more answers first.")
    if method == "kto" and len({r["label"] for r in rows}) < 2:
        raise RoundError("KTO needs both liked and disliked answers; the store has only one kind")

    stage = registry.stages[from_stage]
    checkpoint = registry.stages[registry.root(from_stage)].model
    partial = out_dir.with_name(f".{name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    began = time.monotonic()
    try:
        loss, steps = train_adapter(checkpoint, stage.adapter, rows, plan, partial)
        seconds = time.monotonic() - began
        (partial / "stagechat_round.json").write_text(json.dumps({
            "name": name, "from_stage": from_stage, "method": method, "rows": len(rows), "steps": steps,
            "loss": loss, "train_seconds": round(seconds, 1), "plan": asdict(plan),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }, indent=2))
        partial.rename(out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)

    register_round(config, name, from_stage, out_dir, data_dir=data_dir,
                   description=f"RLHF round: {method.upper()} on {len(rows)} ratings, continuing {from_stage}")
    log.info("registered stage %s (%d %s rows, %d steps, %.1f s)", name, len(rows), method, steps, seconds)
    reloaded = reload_server(server, admin_key) if server else None
    return RoundResult(name, out_dir, len(rows), steps, seconds, loss, reloaded)


def new_round_dir(registry, config: Path, from_stage: str, name: str, data_dir: Path, folder: str = "rounds") -> Path:
    """`{data_dir}/<folder>/<name>` once the names check out; raises `RoundError` otherwise."""
    from server.registry_file import STAGE_NAME

    if from_stage not in registry.stages:
        raise RoundError(f"--from-stage '{from_stage}' is not a stage of {config} ({', '.join(registry.stages)})")
    if name in registry.stages or name in registry.reward_models:
        raise RoundError(f"'{name}' already exists in {config}: it already names a stage or reward model; "
                         "pick another --name")
    if not STAGE_NAME.match(name):
        raise RoundError(f"--name {name!r}: use letters, digits, '.', '_' or '-'")
    out_dir = data_dir / folder / name
    if out_dir.exists():
        raise RoundError(f"{out_dir} already exists; pick another --name or remove it")
    return out_dir


def register_round(config: Path, name: str, from_stage: str, out_dir: Path, *, description: str,
                   data_dir: Path) -> None:
    """Add the round's adapter as stage `name` on `from_stage` (inheriting its sampling defaults and
    reward model); on failure the adapter folder is removed, so no unregistered round stays behind."""
    import yaml

    from server.registry_file import add_stage

    raw = yaml.safe_load(Path(config).read_text())["stages"][from_stage]
    entry: dict[str, Any] = {"adapter": str(out_dir), "base": from_stage, "description": description}
    for key in ("sampling", "reward_model"):
        if raw.get(key):
            entry[key] = raw[key]
    try:
        add_stage(config, name, entry, data_dir=data_dir)
    except Exception:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise


def reload_server(url: str, admin_key: str | None = None) -> dict[str, Any]:
    """POST /v1/admin/reload on a running server; returns its answer."""
    import httpx

    headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
    # A reload may restart an engine (≈ 30 s) when the new adapter does not fit its LoRA slots.
    response = httpx.post(f"{url.rstrip('/')}/v1/admin/reload", headers=headers, timeout=300)
    if response.status_code != 200:
        raise RoundError(f"the stage is registered, but {url} did not reload: "
                         f"{response.status_code} {response.text[:500]}")
    return response.json()


def run_round(args) -> int:
    """The CLI entry point (`server.cli`): flags in, exit code out."""
    from server.registry import RegistryError
    from server.settings import Settings

    settings = Settings.from_env(database_url=args.database_url)
    if args.method == "rloo":  # online RL against a reward model: its own module
        from models.rl_round import run_rl_round

        return run_rl_round(args, settings)
    try:
        result = train_round(
            config=Path(args.config), from_stage=args.from_stage, name=args.name, method=args.method,
            database_url=settings.resolved_database_url, data_dir=settings.data_dir,
            min_ratings=args.min_ratings, server=args.server, admin_key=settings.admin_key,
            plan=RoundPlan(method=args.method, steps=args.steps, lr=args.lr),
        )
    except (RoundError, RegistryError) as exc:
        print(f"stagechat rlhf-round: {exc}", file=sys.stderr)
        return 2
    print(f"stage '{result.name}': {result.rows} {args.method} rows, {result.steps} steps in "
          f"{result.train_seconds:.1f} s (loss {result.loss:.4f}) → {result.adapter_dir}")
    if result.reloaded is not None:
        print(f"{args.server} reloaded: added {', '.join(result.reloaded['added']) or 'nothing'}")
    else:
        print("serve it: POST /v1/admin/reload on a running server (or pass --server URL)")
    return 0
