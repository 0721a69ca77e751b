"""The Leaderboard tab's lineage plot and reward-agreement table: what `GET /v1/leaderboard/lineage`
and the leaderboard's `reward_agreement` hold, drawn and tabulated.

What it knows: matplotlib (the object API, no pyplot: it runs in a worker thread) and the shape of
those two bodies. One figure per family, three panels sharing the stages on x (parent before child):
human strength (Bradley–Terry, 95% interval as error bars), each reward model's mean reward over the
stage's judged answers (and, grey, the demo manifest's mean reward on the evaluation prompts), and
KL to the parent; a line joins each stage to its parent, so sibling rounds
(dpo and rlhf on sft) branch. A figure missing for a stage is left out of its panel, and the text
under the plot says which and why. What it does not know: Gradio, HTTP or how the figures are computed.
"""

from __future__ import annotations

from typing import Any

AGREEMENT_COLUMNS = ["reward model", "stage", "agrees with voters", "95% interval", "pairs", "mean reward", "hacking?"]


def agreement_rows(agreement: dict[str, Any]) -> list[list[Any]]:
    """One row per reward model and stage: agreement, interval, pairs, mean reward, the hacking flag."""
    rows = []
    for model, figures in agreement.get("models", {}).items():
        for stage, s in figures["stages"].items():
            vs = s.get("vs_parent") or {}
            if s.get("reward_hacking"):
                flag = (
                    f"{'⚠ likely' if vs['significant'] else 'maybe (not significant)'}: reward "
                    f"{vs['reward_change']:+.3g} over {vs['parent']}, agreement {vs['agreement_change']:+.0%} "
                    f"(p = {vs['p_value']:.2g})"
                )
            elif s.get("reward_hacking") is False:
                flag = f"no (vs {vs['parent']})"
            else:
                flag = "–"
            rows.append(
                [
                    model,
                    stage,
                    "–" if s["agreement"] is None else f"{s['agreement']:.0%}",
                    "–" if s["ci95"] is None else f"[{s['ci95'][0]:.0%}, {s['ci95'][1]:.0%}]",
                    s["pairs"],
                    "–" if s["mean_reward"] is None else round(s["mean_reward"], 3),
                    flag,
                ]
            )
    return rows


def agreement_summary(agreement: dict[str, Any]) -> str:
    if not agreement.get("models"):
        return "**Reward model against people**: this server's registry names no reward model."
    parts = []
    for model, f in agreement["models"].items():
        if f["pairs"]:
            lo, hi = f["ci95"]
            parts.append(
                f"**{model}** orders {f['agreement']:.0%} of {f['pairs']} judged pairs as the voters did "
                f"(95% interval {lo:.0%}–{hi:.0%})"
            )
        else:
            parts.append(f"**{model}**: no judged pair scored yet")
        if f["unscored_answers"]:
            parts[-1] += f"; {f['unscored_answers']} judged answers not scored yet (press *Score judged answers*)"
    return (
        "**Reward model against people** — "
        + "; ".join(parts)
        + f". Ties and both-bad votes order nothing and are left out ({agreement['tied_pairs']} pairs)."
    )


def lineage_figure(body: dict[str, Any]):
    """One figure: a column of three panels per family (strength, mean reward, KL to the parent)."""
    from matplotlib.figure import Figure

    families = [f for f in body["families"] if len(f["stages"]) > 1] or body["families"]
    fig = Figure(figsize=(max(4.5, 1.6 * max(len(f["stages"]) for f in families)) * len(families), 7))
    axes = fig.subplots(3, len(families), squeeze=False, sharex="col")
    for col, fam in enumerate(families):
        rows = fam["stages"]
        x = {r["stage"]: i for i, r in enumerate(rows)}
        top, mid, bottom = axes[0][col], axes[1][col], axes[2][col]
        _tree(top, rows, x, lambda r: r["strength"], color="tab:blue")
        for r in rows:
            if r["strength"] is not None:
                lo, hi = r["ci95"]
                error = [[r["strength"] - lo], [hi - r["strength"]]]
                top.errorbar(x[r["stage"]], r["strength"], yerr=error, fmt="o", capsize=4, color="tab:blue")
        top.set_ylabel("human strength (BT)")
        top.set_title(f"family of {fam['root']}")
        models = sorted({m for r in rows for m in r["rewards"]})
        for model in models:
            value = lambda r, m=model: r["rewards"].get(m, {}).get("mean_reward")  # noqa: E731
            _tree(mid, rows, x, value, marker="s", label=model)
        if any(r.get("eval") and r["eval"].get("mean_reward") is not None for r in rows):
            value = lambda r: (r.get("eval") or {}).get("mean_reward")  # noqa: E731
            _tree(mid, rows, x, value, marker="D", label="eval prompts (manifest)", color="grey")
            models.append("eval")
        if models:
            mid.legend(fontsize=8)
        else:
            mid.text(0.5, 0.5, "no reward model", transform=mid.transAxes, ha="center", va="center", color="grey")
        mid.set_ylabel("mean reward")
        _tree(bottom, rows, x, lambda r: r["kl_to_parent"], marker="^", color="tab:red")
        for r in rows:  # two kinds of KL share this axis: say which each point is
            if r["kl_to_parent"] is not None:
                kind = "eval" if r["kl_source"].startswith("manifest") else "training"
                bottom.annotate(kind, (x[r["stage"]], r["kl_to_parent"]), textcoords="offset points", xytext=(6, 4))
        bottom.set_ylabel("KL to parent")
        bottom.set_xticks(range(len(rows)), [r["stage"] for r in rows], rotation=20)
    fig.tight_layout()
    return fig


def _tree(ax, rows: list[dict[str, Any]], x: dict[str, int], value, **style) -> None:
    """Points at each stage's value, a line from each to its parent's (when both have one)."""
    by = {r["stage"]: value(r) for r in rows}
    color = style.pop("color", None)
    label = style.pop("label", None)
    points = [(x[s], v) for s, v in by.items() if v is not None]
    if not points:
        ax.text(0.5, 0.5, "no figures", transform=ax.transAxes, ha="center", va="center", color="grey")
        return
    drawn = ax.plot(*zip(*points), linestyle="none", marker=style.get("marker", "o"), color=color, label=label)
    color = drawn[0].get_color()
    for r in rows:
        parent = r["parent"]
        if parent in by and by[parent] is not None and by[r["stage"]] is not None:
            ax.plot([x[parent], x[r["stage"]]], [by[parent], by[r["stage"]]], color=color, alpha=0.6)


def lineage_notes(body: dict[str, Any]) -> str:
    """What is missing from the plot, and why."""
    notes = []
    for fam in body["families"]:
        for r in fam["stages"]:
            if r["kl_to_parent"] is None and r["parent"] is not None:
                notes.append(f"{r['stage']}: KL {r['kl_source']}")
            if r["strength"] is None:
                notes.append(f"{r['stage']}: no judgement against another stage yet")
    return ("**Lineage** — missing: " + "; ".join(notes) + ".") if notes else ""
