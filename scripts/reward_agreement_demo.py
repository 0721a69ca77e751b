"""The reward model against people on the demo family: how often `rm` orders two stages' answers to the
same prompt as a voter who judges by content does, per stage, with the reward-hacking flag.

Answers: each stage of `models/stages.yaml` (base, sft, dpo, rlhf) answers `stagechat eval`'s test
prompts (`models.demo.heldout.eval_prompts`, `--prompts` of them, spread over the kinds), sampled at
the stage's own settings (temperature 0.7, top-p 0.95, 64 tokens) in transformers + peft — not vLLM:
this runs beside other work on a small machine. Scores: the reward model `rm` in transformers, on
exactly the input the server's reward engine reads (`server.rewards.render`; vLLM's pooling runner
reproduces transformers' score, tests/server/test_rewards_vllm.py). Voter: scores an answer by
`models.eval.score_reply` — 2 for the right fact (or, where none is right, the answer the demo's
preference data puts first: the polite refusal, greeting or scope line), +1 for the preferred full
sentence — and prefers the higher; equal scores are a tie, left out as the API leaves ties out. Every
pair of stages on every prompt is one judged pair. The figures are `server.reward_agreement`'s, the
arithmetic `GET /v1/leaderboard` does.

    python scripts/reward_agreement_demo.py [--prompts 160] [--seed 0] [--json [FILE]]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from bench_common import add_json_argument, output

REPO = Path(__file__).resolve().parent.parent


def answers_of(registry, stages: list[str], prompts, seed: int) -> dict[str, list[str]]:
    """Each stage's sampled answer to every prompt (one batch per stage)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = registry.stages[registry.root(stages[0])].model
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [tokenizer.apply_chat_template(p.message_list, tokenize=False, add_generation_prompt=True) for p in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = {}
    for stage in stages:
        spec = registry.stages[stage]
        model = AutoModelForCausalLM.from_pretrained(registry.stages[registry.root(stage)].model, dtype=torch.float32)
        if spec.adapter is not None:  # a round continues its from-stage's LoRA: one adapter on the root, as served
            model = PeftModel.from_pretrained(model, spec.adapter)
        model.eval()
        sampling = spec.sampling
        torch.manual_seed(seed)
        with torch.no_grad():
            ids = model.generate(
                **batch,
                do_sample=True,
                temperature=sampling.temperature or 1.0,
                top_p=sampling.top_p or 1.0,
                max_new_tokens=sampling.max_tokens or 64,
                pad_token_id=tokenizer.pad_token_id,
            )
        out[stage] = [
            tokenizer.decode(row[batch["input_ids"].shape[1] :], skip_special_tokens=True).strip() for row in ids
        ]
    return out


def rm_scores(registry, name: str, prompts, answers: dict[str, list[str]]) -> dict[str, float]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from server.rewards import render

    path = registry.reward_models[name].model
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    scores = {}
    with torch.no_grad():
        for stage, texts in answers.items():
            for i, (prompt, text) in enumerate(zip(prompts, texts)):
                ids = torch.tensor([render(tokenizer, prompt.message_list, text)])
                scores[f"{stage}:{i}"] = model(input_ids=ids).logits[0, 0].item()
    return scores


def voter_score(text: str, prompt) -> int:
    from models.eval import preferred_reply, score_reply

    s = score_reply(text, prompt)
    right = s.correct or (
        prompt.kind in ("unknown", "greeting", "offtopic") and text.strip() == preferred_reply(prompt)
    )
    return 2 * right + s.preferred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    add_json_argument(parser)
    args = parser.parse_args()

    from models.demo.heldout import eval_prompts
    from server.registry import load_registry
    from server.reward_agreement import JudgedPair, model_agreement

    registry = load_registry(REPO / "models" / "stages.yaml")
    stages = list(registry.stages)
    everything = eval_prompts()
    prompts = random.Random(args.seed).sample(everything, min(args.prompts, len(everything)))
    began = time.perf_counter()
    answers = answers_of(registry, stages, prompts, args.seed)
    generated = time.perf_counter() - began
    scores = rm_scores(registry, "rm", prompts, answers)
    votes = {f"{s}:{i}": voter_score(answers[s][i], p) for s in stages for i, p in enumerate(prompts)}
    pairs, tied = [], 0
    for i in range(len(prompts)):
        for x in range(len(stages)):
            for y in range(x + 1, len(stages)):
                a, b = f"{stages[x]}:{i}", f"{stages[y]}:{i}"
                if votes[a] == votes[b]:
                    tied += 1
                    continue
                (hi, hs), (lo, ls) = sorted([(a, stages[x]), (b, stages[y])], key=lambda t: -votes[t[0]])
                pairs.append(JudgedPair(hi, lo, hs, ls))
    figures = model_agreement(pairs, scores, {s: registry.parent(s) for s in stages})
    voter_mean = {s: sum(votes[f"{s}:{i}"] for i in range(len(prompts))) / len(prompts) for s in stages}
    result = {
        "prompts": len(prompts),
        "judged_pairs": len(pairs),
        "tied_pairs": tied,
        "generation_seconds": round(generated, 1),
        "agreement": figures["agreement"],
        "ci95": figures["ci95"],
        "stages": {
            s: {
                "voter_score": round(voter_mean[s], 3),
                **{k: figures["stages"][s][k] for k in ("agreement", "ci95", "pairs", "mean_reward", "reward_hacking")},
                "vs_parent": figures["stages"][s]["vs_parent"],
            }
            for s in stages
            if s in figures["stages"]
        },
    }
    lines = [
        f"{len(prompts)} prompts, {len(pairs)} judged pairs ({tied} tied, left out); rm agrees on "
        f"{figures['agreement']:.1%} {figures['ci95']}",
        f"{'stage':8} {'voter':>6} {'agree':>7} {'95% interval':>16} {'pairs':>6} {'reward':>7}  hacking",
    ]
    for s, f in result["stages"].items():
        ci = f"[{f['ci95'][0]:.2f}, {f['ci95'][1]:.2f}]" if f["ci95"] else "–"
        lines.append(
            f"{s:8} {f['voter_score']:6.2f} {f['agreement']:7.1%} {ci:>16} {f['pairs']:6d} "
            f"{f['mean_reward']:7.3f}  {f['reward_hacking']} {f['vs_parent'] or ''}"
        )
    with output(args) as figures_out:
        figures_out.update(result)
        print("\n".join(lines))


if __name__ == "__main__":
    main()
