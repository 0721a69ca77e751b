"""`stagechat build-demo`: make the demo family (base, sft, dpo, draft, rm, rlhf) from the facts in this repo.

Steps run in order — data, tokenizer, base (pre-training), sft (TRL SFT + LoRA), dpo (TRL DPO
continuing the SFT adapter on the best answer of each synthetic ranking against each other one), draft
(the base with most of its layers dropped, trained for speculative decoding), rm (a reward model
trained on the same rankings, `models.reward_model`), rlhf (the SFT adapter optimised online against
rm with RLOO, `models.rl_round`) — each into its own folder under `out_dir`. A step writes into
`<name>.partial/`, then drops a marker and renames the folder (`models.rounds.stage_folder`), so a
folder with a marker is complete and a re-run skips it; an interrupted step starts over.
Progress goes to the `models.demo.build` logger. This module knows the order, the sizes and the
layout; the modules it calls know how to train. It never reads the held-out evaluation material
(`models.demo.heldout`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.demo import corpus, general_text
from models.demo.pretrain import ModelShape, TrainPlan
from models.demo.sft import AdapterPlan
from models.reward_model import RewardPlan
from models.rl_round import RLPlan
from models.rounds import stage_folder

log = logging.getLogger(__name__)

MARKER = ".stagechat-complete.json"
# Bump when what a step produces changes (data, shapes, training plans): every step built by an
# older recipe is then rebuilt, so a pulled change never serves with a stale family.
RECIPE_VERSION = 11
STEPS = ("data", "tokenizer", "base", "sft", "dpo", "draft", "rm", "rlhf")
# What each step is made from: a step whose input was rebuilt in this run is rebuilt too.
INPUTS = {
    "tokenizer": ("data",),
    "base": ("tokenizer",),
    "sft": ("base",),
    "dpo": ("sft",),
    "draft": ("base",),
    "rm": ("sft",),
    "rlhf": ("sft", "rm"),
}


@dataclass(frozen=True)
class Size:
    prose_docs: int
    vocab_size: int
    base_shape: ModelShape
    base_plan: TrainPlan
    sft_per_country: int  # prompts per real country (single questions and follow-ups), see corpus.sft_examples
    sft_plan: AdapterPlan
    rank_per_country: int  # ranked answer sets per real country, see corpus.rankings
    dpo_plan: AdapterPlan
    draft_per_country: int
    draft_layers: tuple[int, ...]  # the base's layers the draft starts from (models.demo.draft)
    draft_plan: TrainPlan
    rm_plan: RewardPlan
    rl_plan: RLPlan
    rl_held_out: int  # ranking prompts kept out of the RL round to measure its reward before and after


SIZES = {
    # Measured on a shared 2-core machine, two threads (recipe 10): data+tokenizer 2 s, base 163 s
    # (1.26M params, 500 steps of 32x128 tokens), sft 77 s, dpo 110 s, draft 34 s, rm 188 s (13 s of it
    # since saved by scoring the held-out pairs in batches), rlhf 80 s; 653 s in all. Recipe 11 (the
    # draft from the base): base 149 s, sft 79 s, dpo 105 s, draft 55 s, rm 163 s, rlhf 73 s; 625 s.
    # Eval figures (and the reward hacking the rlhf round shows): docs/measurements.md and the shipped manifest.
    "full": Size(
        prose_docs=20_000,
        vocab_size=4096,  # the corpus yields ~2.6k merges before running out; the cap is not reached
        base_shape=ModelShape(hidden=128, layers=4, heads=4, intermediate=384),
        base_plan=TrainPlan(steps=500, batch_size=32, seq_len=128, lr=5e-3),
        sft_per_country=12,
        sft_plan=AdapterPlan(steps=800, batch_size=16, lr=3e-3),
        rank_per_country=4,
        dpo_plan=AdapterPlan(steps=400, batch_size=16, lr=2e-3),
        draft_per_country=8,
        # The base's first and last layers. At 150 steps 0.64-0.70 of the draft's tokens were accepted
        # on the chat stages, at 300 steps 0.81-0.89 (a from-scratch 2x64 draft: 0.40-0.45).
        draft_layers=(0, 3),
        draft_plan=TrainPlan(steps=300, batch_size=32, seq_len=128, lr=2e-3),
        # ≈ 0.8 epoch of the 33k pairs: at 800 x 16 and 3e-4 (0.4 epoch) it scored rude lines above
        # correct answers in 78% of held-out questions.
        rm_plan=RewardPlan(steps=800, batch_size=32, lr=1e-3, max_length=128),
        # Sampling at 0.7, not 1.0: at 1.0 this small policy often samples garbled text, and the
        # reward model, which never saw such text, pays some of it (one sample scored 1.07: "Can many
        # wide and I am not sure that what it for hours about story funny...").
        rl_plan=RLPlan(
            steps=250,
            kl_coef=0.2,
            num_generations=4,
            batch_size=16,
            lr=3e-4,
            max_completion_length=40,
            temperature=0.7,
            eval_samples=2,
        ),
        rl_held_out=16,
    ),
    # Tiny and untrained-in-effect: exercises every step and every file format in well under 90 s.
    "smoke": Size(
        prose_docs=400,
        vocab_size=512,
        base_shape=ModelShape(hidden=64, layers=1, heads=2, intermediate=128),
        base_plan=TrainPlan(steps=4, batch_size=8, seq_len=64, lr=5e-3, warmup=1),
        sft_per_country=1,
        sft_plan=AdapterPlan(steps=3, batch_size=4, lr=1e-3, rank=4, alpha=8),
        rank_per_country=1,
        dpo_plan=AdapterPlan(steps=2, batch_size=4, lr=1e-4, rank=4, alpha=8),
        draft_per_country=1,
        draft_layers=(0,),
        draft_plan=TrainPlan(steps=3, batch_size=8, seq_len=64, lr=5e-3, warmup=1),
        rm_plan=RewardPlan(steps=3, batch_size=4, lr=1e-4, max_length=128),
        rl_plan=RLPlan(steps=2, num_generations=2, batch_size=4, max_completion_length=8, rank=4, eval_samples=1),
        rl_held_out=2,
    ),
}


def default_out_dir() -> Path:
    from server.settings import default_data_dir

    return default_data_dir() / "demo"


def training_data(spec: Size) -> dict[str, list]:
    """Every data file a build of this size trains on, by name (what its `data/` folder holds)."""
    return {
        "prose": corpus.prose_documents(spec.prose_docs),
        "general": general_text.general_documents(spec.prose_docs // 8),
        "sft": corpus.sft_examples(spec.sft_per_country),
        "rankings": corpus.rankings(spec.rank_per_country),
        "draft": corpus.draft_dialogues(spec.draft_per_country),
    }


def is_complete(folder: Path, size: str) -> bool:
    marker = folder / MARKER
    if not marker.exists():
        return False
    try:
        done = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return done.get("size") == size and done.get("recipe") == RECIPE_VERSION


def _run_step(name: str, out_dir: Path, size: str, work: Callable[[Path], None], stale_inputs: bool) -> float | None:
    """Seconds the step took, or None when it was already built."""
    final = out_dir / name
    if is_complete(final, size) and not stale_inputs:
        log.info("[build-demo] %s: already built, skipped", name)
        return None
    log.info("[build-demo] %s: building", name)

    def marker(_, seconds: float) -> dict:
        return {"size": size, "recipe": RECIPE_VERSION, "seconds": round(seconds, 2)}

    # replace: a stale or other-size build in `final` goes once the new one is complete.
    _, seconds = stage_folder(final, work, marker, MARKER, partial=out_dir / f"{name}.partial", replace=True)
    log.info("[build-demo] %s: done in %.1f s", name, seconds)
    return seconds


def build_demo(out_dir: Path | None = None, size: str = "full") -> dict[str, float]:
    """Build every missing stage of the demo family into `out_dir`; returns seconds per step and total."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    import torch  # imported here: `stagechat --help` must not pay for torch

    from models.demo import dpo, draft, pretrain, sft
    from models.demo import tokenizer as tok

    out_dir = Path(out_dir) if out_dir is not None else default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = SIZES[size]
    # Small matrices: more threads than cores only adds contention. STAGECHAT_BUILD_THREADS overrides.
    torch.set_num_threads(int(os.environ.get("STAGECHAT_BUILD_THREADS") or min(2, os.cpu_count() or 1)))
    data_dir = out_dir / "data"

    def load(name: str):
        return json.loads((data_dir / f"{name}.json").read_text())

    def make_data(d: Path) -> None:
        for name, rows in training_data(spec).items():
            (d / f"{name}.json").write_text(json.dumps(rows, ensure_ascii=False))

    def pretraining_text() -> list[str]:
        return load("prose") + load("general")

    def make_tokenizer(d: Path) -> None:
        # Trained on pre-training text only, as a real tokenizer is: a word that only chat data uses
        # would get a token whose embedding pre-training never trained, and LoRA cannot train it.
        # Fictional names (train and held out alike) split into pieces of real names.
        tok.save_tokenizer(tok.train_tokenizer(pretraining_text(), spec.vocab_size), d)

    def tokenizer_():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(out_dir / "tokenizer")

    def make_base(d: Path) -> None:
        tokenizer = tokenizer_()
        model = pretrain.make_model(spec.base_shape, tokenizer)
        blocks = pretrain.pack(pretraining_text(), tokenizer, spec.base_plan.seq_len)
        n_params = sum(p.numel() for p in model.parameters())
        log.info("[build-demo] base: %.2fM parameters, %.2fM tokens of prose", n_params / 1e6, blocks.numel() / 1e6)
        pretrain.train_causal_lm(model, blocks, spec.base_plan, desc="base")
        pretrain.save_checkpoint(model, out_dir / "tokenizer", d)

    def make_sft(d: Path) -> None:
        sft.train_sft(out_dir / "base", load("sft"), spec.sft_plan, d)

    def make_dpo(d: Path) -> None:
        dpo.train_dpo(out_dir / "base", out_dir / "sft", corpus.best_pairs(load("rankings")), spec.dpo_plan, d)

    def make_rm(d: Path) -> None:
        from models.reward_model import split_by_prompt, train_reward_model

        train, held_out = split_by_prompt(corpus.preference_pairs(load("rankings")))
        accuracy, judged, steps = train_reward_model(
            str(out_dir / "base"), str(out_dir / "sft"), train, held_out, spec.rm_plan, d
        )
        figures = {
            "held_out_accuracy": round(accuracy, 4),
            "held_out_pairs": judged,
            "train_pairs": len(train),
            "steps": steps,
        }
        log.info("[build-demo] rm: %s", figures)
        (d / "stagechat_demo_rm.json").write_text(json.dumps(figures) + "\n")

    def make_rlhf(d: Path) -> None:
        from models.rl_round import final_kl, save_curves, train_policy

        prompts = [row["prompt"] for row in load("rankings")]
        held_out, train = prompts[: spec.rl_held_out], prompts[spec.rl_held_out :]
        figures = train_policy(
            str(out_dir / "base"), str(out_dir / "sft"), str(out_dir / "rm"), train, held_out, spec.rl_plan, d
        )
        save_curves(figures["rows"], d)
        summary = {k: figures[k] for k in ("reward_before", "reward_after")}
        summary["final_kl"] = final_kl(figures["rows"])
        log.info("[build-demo] rlhf: %s", summary)
        (d / "stagechat_demo_rl.json").write_text(json.dumps({**summary, **figures}, default=str) + "\n")

    def make_draft(d: Path) -> None:
        draft.train_draft(
            tokenizer_(), out_dir / "base", spec.draft_layers, load("draft"), pretraining_text(), spec.draft_plan, d
        )

    work = {
        "data": make_data,
        "tokenizer": make_tokenizer,
        "base": make_base,
        "sft": make_sft,
        "dpo": make_dpo,
        "draft": make_draft,
        "rm": make_rm,
        "rlhf": make_rlhf,
    }
    timings: dict[str, float] = {}
    rebuilt: set[str] = set()
    start = time.perf_counter()
    for name in STEPS:
        stale = any(i in rebuilt for i in INPUTS.get(name, ()))
        seconds = _run_step(name, out_dir, size, work[name], stale)
        if seconds is not None:
            rebuilt.add(name)
        timings[name] = round(seconds or 0.0, 3)
    timings["total"] = round(time.perf_counter() - start, 3)
    return timings
