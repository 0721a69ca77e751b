"""RM + RL on the tiny family, end to end through the commands' own functions; prints the figures.

A random tiny family (base + a LoRA `sft`) and a store of synthetic rankings: per country, K = 4
answers ranked "full sentence naming the capital" > "bare capital" > "a wrong capital" > "off topic"
(6 pairs each). Then `stagechat reward-model` (held-out pairwise accuracy) and `stagechat rlhf-round
--method rloo` against it (time, mean reward on held-out prompts before/after, KL, sample answers —
where reward hacking shows). The tiny policy is random, so what RL finds is whatever the reward
model pays for: a check of the machinery and a place to watch reward hacking, not of quality.

    .venv/bin/python scripts/reward_pipeline.py [--countries 40] [--rm-steps 120] [--rl-steps 40]
        [--kl-coef 0.05] [--json [FILE]]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from bench_common import add_json_argument, output

REPO = Path(__file__).resolve().parent.parent


def fill_store(url: str, countries: list[dict]) -> None:
    from server.store import GenerationRecord, Store, prompt_hash

    store = Store(url)
    n = 0
    try:
        for i, c in enumerate(countries):
            messages = [{"role": "user", "content": f"What is the capital of {c['country']}?"}]
            wrong = countries[(i + 1) % len(countries)]["capital"]
            ids = []
            for text in (
                f"The capital of {c['country']} is {c['capital']}.",
                c["capital"],
                f"The capital of {c['country']} is {wrong}.",
                "Hello there, how are you today?",
            ):
                n += 1
                record = GenerationRecord(
                    id=f"chatcmpl-p{n}",
                    stage="sft",
                    client_id="script",
                    kind="chat",
                    prompt_hash=prompt_hash(messages),
                    messages=messages,
                    prompt=None,
                    completion=text,
                    sampling={},
                    speculative_method=None,
                    speculative=None,
                    prompt_tokens=1,
                    completion_tokens=1,
                    finish_reason="stop",
                    ttft_ms=1.0,
                    duration_ms=1.0,
                )
                store.record_generation(record)
                ids.append(record.id)
            store.rank(ids, [[i] for i in ids], rater="script")
    finally:
        store.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--countries", type=int, default=40)
    p.add_argument("--rm-steps", type=int, default=120)
    p.add_argument("--rm-lr", type=float, default=1e-3)
    p.add_argument("--rl-steps", type=int, default=40)
    p.add_argument("--kl-coef", type=float, default=0.05)
    add_json_argument(p)
    args = p.parse_args()
    from models.reward_model import RewardPlan, build_reward_model
    from models.rl_round import RLPlan, train_rl_round
    from models.tiny import make_tiny_adapter, make_tiny_checkpoint

    with output(args) as figures:
        root = Path(tempfile.mkdtemp(prefix="reward-pipeline-"))
        make_tiny_checkpoint(root / "base")
        make_tiny_adapter(root / "base", root / "lora")
        config = root / "stages.yaml"
        config.write_text(
            "engine: {max_model_len: 512, dtype: float32}\nstages:\n"
            f"  base:\n    model: {root / 'base'}\n"
            f"  sft:\n    adapter: {root / 'lora'}\n    base: base\n"
        )
        countries = json.loads((REPO / "models" / "demo" / "countries.json").read_text())["countries"][: args.countries]
        url = f"sqlite:///{root / 'stagechat.db'}"
        fill_store(url, countries)

        rm = build_reward_model(
            config=config,
            from_stage="sft",
            name="rm",
            database_url=url,
            data_dir=root,
            plan=RewardPlan(steps=args.rm_steps, lr=args.rm_lr),
        )
        print(
            f"reward model: {rm.train_pairs} training pairs, {rm.held_out_pairs} held out, {rm.steps} steps in "
            f"{rm.train_seconds:.1f} s; held-out pairwise accuracy {rm.held_out_accuracy:.3f}"
        )

        prompts = root / "prompts.jsonl"
        prompts.write_text("".join(json.dumps(f"What is the capital of {c['country']}?") + "\n" for c in countries))
        began = time.monotonic()
        rl = train_rl_round(
            config=config,
            from_stage="sft",
            name="rl",
            reward_model="rm",
            database_url=url,
            data_dir=root,
            prompts_file=prompts,
            plan=RLPlan(steps=args.rl_steps, kl_coef=args.kl_coef),
        )
        wall = time.monotonic() - began
        meta = json.loads((rl.adapter_dir / "stagechat_round.json").read_text())
        print(
            f"RLOO: {rl.steps} steps on {rl.prompts} prompts in {rl.train_seconds:.1f} s ({wall:.1f} s with set-up); "
            f"mean reward on {rl.held_out_prompts} held-out prompts {rl.reward_before:.3f} → "
            f"{rl.reward_after:.3f}; final KL {rl.final_kl}"
        )
        first, last = rl.log_rows[:5], rl.log_rows[-5:]
        print("first steps (reward, kl):", [(round(r["reward"], 3), r["kl"] and round(r["kl"], 4)) for r in first])
        print("last steps  (reward, kl):", [(round(r["reward"], 3), r["kl"] and round(r["kl"], 4)) for r in last])
        for label in ("samples_before", "samples_after"):
            print(label)
            for s in meta[label][:4]:
                print(f"  {s['reward']:+.3f}  {s['prompt']!r} → {s['answer']!r}")
        figures.update(
            {
                "rm": {
                    "accuracy": rm.held_out_accuracy,
                    "train_pairs": rm.train_pairs,
                    "held_out": rm.held_out_pairs,
                    "seconds": rm.train_seconds,
                },
                "rl": {
                    "seconds": rl.train_seconds,
                    "before": rl.reward_before,
                    "after": rl.reward_after,
                    "final_kl": rl.final_kl,
                    "rows": rl.log_rows,
                },
                "samples": meta,
                "files": str(root),
            }
        )
        print(f"files: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
