"""Speculation token by token: which tokens of an answer were a draft the target accepted, and which
the target produced itself.

Each engine step that verified drafts emits the `j` draft tokens the target accepted, then one
token of the target's own: it replaces the first rejected draft token (`j` < drafted), or it is the
bonus token after all of them were accepted (`j` = drafted). A step that proposed no draft (the first
token, which the prompt's own step samples, or prompt lookup finding no match) emits one target
token. vLLM 0.32 reports, when a sequence finishes, the ordered (drafted, accepted) pair of every
verifying step (`per_request_spec_decode_metrics = "detailed"`), but not which emitted tokens each step
produced, nor the steps that drafted nothing.
The token counts of the deltas the engine streamed fill that in: a delta holds whole steps (one per
step, or several when vLLM merged outputs a slow consumer had not taken yet), so `align` places the
verify steps and the draft-less ones between delta boundaries. Where it cannot tell a verify step
that accepted nothing from a draft-less step (both emit one token) inside one delta, it takes the
verify step first: the counts stay exact, only such a "replaced"/"target" pair may swap places.

The final step may be cut short (a stop, EOS or max_tokens inside it): its accepted draft tokens past
the end are `dropped`, so `accepted marks + dropped = accepted_tokens` and `sum(drafted) =
draft_tokens` always hold. Pure: no engine, no HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass

ACCEPTED = "accepted"  # a draft token the target accepted
REPLACED = "replaced"  # the target's token in place of a rejected draft token
BONUS = "bonus"  # the target's token after every draft token of the step was accepted
TARGET = "target"  # the target's token at a step that drafted nothing

MAX_STATES = 200_000  # alignment gives up (no marks) beyond this: a pathological answer, not a slow request


@dataclass(frozen=True)
class SpecMarks:
    """Marks of one answer: `kinds[i]` for token i, and the verify steps they came from."""

    kinds: tuple[str, ...]
    positions: tuple[int, ...]  # the token's place in its step: 1 = first token after the step's start
    steps: tuple[tuple[int, int], ...]  # (drafted, accepted) per verify step, in order (vLLM's)
    dropped: int = 0  # accepted draft tokens past the answer's end (a cut-short final step)

    def by_position(self) -> list[dict[str, int]]:
        """Acceptance by draft position: at position p, how many steps drafted a p-th token and how
        many of those the target accepted (accepted ones are a prefix, so `accepted >= p`)."""
        depth = max((d for d, _ in self.steps), default=0)
        return [
            {
                "position": p,
                "drafted": sum(d >= p for d, _ in self.steps),
                "accepted": sum(a >= p for _, a in self.steps),
            }
            for p in range(1, depth + 1)
        ]

    def body(self) -> dict:
        """Extension in a response's choice (`speculative_marks`)."""
        return {
            "tokens": list(self.kinds),
            "steps": [list(s) for s in self.steps],
            "dropped": self.dropped,
            "by_position": self.by_position(),
        }


def align(groups: list[int], steps: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> SpecMarks | None:
    """Marks for an answer streamed as deltas of `groups[i]` tokens whose verify steps were `steps`;
    None when no placement fits (the figures do not describe these tokens)."""
    steps = tuple((int(d), int(a)) for d, a in steps)
    total = sum(groups)
    if total == 0 or any(a > d or a < 0 for d, a in steps):
        return None
    bounds, offset = [], 0
    for g in groups:
        offset += g
        bounds.append(offset)
    next_bound = [0] * total  # the first delta boundary after each position
    b = 0
    for pos in range(total):
        while bounds[b] <= pos:
            b += 1
        next_bound[pos] = bounds[b]
    # Depth-first search over (position, verify steps used), verify steps first, remembering dead
    # ends. Draft-less steps are few (the prompt's step, prompt lookup misses): a state with more of
    # them than the figures leave room for is pruned, which keeps the search near-linear.
    sizes = [a + 1 for _, a in steps]
    prefix = [0]
    for size in sizes:
        prefix.append(prefix[-1] + size)
    # at most this many draft-less steps: all but the last verify step in full, the last at least one token
    max_singles = total - (prefix[-2] + 1 if steps else 0)
    if max_singles < 1:
        return None

    def moves(pos: int, used: int) -> list[tuple[tuple[int, int], str]]:
        out = []
        room = next_bound[pos] - pos
        if used < len(steps) and pos > 0:  # the first token comes from the prompt's step: no draft
            if sizes[used] <= room:
                out.append(((pos + sizes[used], used + 1), "verify"))
            elif used == len(steps) - 1 and next_bound[pos] == total:  # cut short: the answer ends in it
                out.append(((total, used + 1), "cut"))
        if pos + 1 - prefix[used] <= max_singles:
            out.append(((pos + 1, used), "single"))
        return out

    dead: set[tuple[int, int]] = set()
    stack = [((0, 0), iter(moves(0, 0)))]
    path: list[tuple[tuple[int, int], str]] = []  # path[i]: the move from stack[i] to stack[i + 1]
    while stack:
        state, options = stack[-1]
        if state == (total, len(steps)):
            break
        step = next(options, None) if state[0] < total else None
        if step is None:
            dead.add(state)
            stack.pop()
            if path:
                path.pop()
            if len(dead) > MAX_STATES:
                return None
            continue
        nxt, how = step
        if nxt in dead:
            continue
        path.append((state, how))
        stack.append((nxt, iter(moves(*nxt)) if nxt[0] < total else iter(())))
    if not stack:
        return None
    kinds: list[str] = []
    positions: list[int] = []
    dropped = 0
    for (pos, used), how in path:
        if how == "single":
            kinds.append(TARGET)
            positions.append(1)
            continue
        drafted, accepted = steps[used]
        emitted = accepted + 1 if how == "verify" else total - pos
        for i in range(emitted):
            if i < accepted:
                kinds.append(ACCEPTED)
            else:
                kinds.append(BONUS if accepted == drafted else REPLACED)
            positions.append(i + 1)
        if how == "cut":
            dropped = accepted - min(accepted, emitted)
    return SpecMarks(tuple(kinds), tuple(positions), steps, dropped)
