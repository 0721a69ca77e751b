"""What raters say, written: thumbs up/down, A/B preferences, rankings of 2..4 answers, corrections,
and their withdrawal. Each is one per (item, rater): saying it again replaces the earlier say.

What it knows: what a valid rating, preference, ranking or correction is (raising `InvalidFeedback`
/ `UnknownResponse` / `UnknownItem`, with nothing written), and that the log is the source of truth
for what was rated: when prompt logging is off, the rating carries the text it rates, and that text
must hash to the logged prompt (`_text_for`). Upserts are one statement, so two concurrent
re-ratings cannot both insert.

What it does not know: listing and export reads (`reads.py`), or HTTP.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from server.store.base import StoreBase
from server.store.records import (
    CHOICES,
    MAX_RANKED,
    RATINGS,
    Correction,
    Feedback,
    InvalidFeedback,
    Preference,
    Ranking,
    UnknownItem,
    prompt_hash,
    utcnow,
)
from server.store.schema import (
    ROWS,
    CorrectionRow,
    FeedbackRow,
    GenerationRow,
    PreferenceRow,
    RankingRow,
    correction_record,
    feedback_record,
    preference_record,
    ranking_record,
)


class FeedbackWrites(StoreBase):
    """The store's rating methods (a mixin of `Store`)."""

    def rate(
        self,
        response_id: str,
        rating: str,
        *,
        rater: str,
        comment: str | None = None,
        tags: Sequence[str] = (),
        prompt: list[dict[str, Any]] | str | None = None,
        completion: str | None = None,
    ) -> Feedback:
        """Store `rater`'s rating of an answer, replacing their earlier one (idempotent).

        When the log lacks the answer's text (prompt logging off), `prompt` and `completion` are
        required; sent text must match the log (see `_text_for`).
        """
        if rating not in RATINGS:
            raise InvalidFeedback(f"'rating' must be one of {', '.join(RATINGS)}; got {rating!r}.", "rating")
        if not all(isinstance(t, str) for t in tags):
            raise InvalidFeedback("'tags' must be a list of strings.", "tags")
        now = utcnow()
        with self._writing() as session:
            generation = self._generation_row(session, response_id, "response_id")
            prompt, completion = _text_for(generation, prompt, completion)
            values = dict(
                rating=rating, comment=comment, tags=list(tags), prompt=prompt, completion=completion, updated_at=now
            )
            insert = _insert(session)(FeedbackRow).values(
                id=_new_id("fb"), response_id=response_id, rater=rater, created_at=now, **values
            )
            # One statement, so two concurrent re-ratings cannot both insert.
            session.execute(insert.on_conflict_do_update(index_elements=["response_id", "rater"], set_=values))
            row = session.scalars(
                sa.select(FeedbackRow).where(FeedbackRow.response_id == response_id, FeedbackRow.rater == rater)
            ).one()
            return feedback_record(row, generation.stage)

    def prefer(
        self,
        response_ids: Sequence[str],
        choice: str,
        *,
        rater: str,
        comment: str | None = None,
        prompt: list[dict[str, Any]] | str | None = None,
        completions: Sequence[str] | None = None,
    ) -> Preference:
        """Store which of two answers to the same prompt `rater` preferred, replacing their earlier say."""
        if len(response_ids) != 2:
            raise InvalidFeedback("'response_ids' must list exactly two response ids.", "response_ids")
        if response_ids[0] == response_ids[1]:
            raise InvalidFeedback("'response_ids' must name two different responses.", "response_ids")
        if choice not in CHOICES:
            raise InvalidFeedback(f"'choice' must be one of {', '.join(CHOICES)}; got {choice!r}.", "choice")
        if completions is not None and len(completions) != 2:
            raise InvalidFeedback("'completions' must hold the two answers' text, in order.", "completions")
        now = utcnow()
        with self._writing() as session:
            a, b = (self._generation_row(session, rid, "response_ids") for rid in response_ids)
            if a.prompt_hash != b.prompt_hash:
                raise InvalidFeedback(
                    "The two responses answer different prompts; a preference compares two answers to the same prompt.",
                    "response_ids",
                )
            text_a = _text_for(a, prompt, completions[0] if completions else None)
            text_b = _text_for(b, prompt, completions[1] if completions else None)
            if sorted(response_ids) != list(response_ids):  # store the pair in one canonical order
                a, b, text_a, text_b, choice = b, a, text_b, text_a, _flip(choice)
            values = dict(
                choice=choice,
                comment=comment,
                prompt=text_a[0] or text_b[0],
                completion_a=text_a[1],
                completion_b=text_b[1],
                updated_at=now,
            )
            insert = _insert(session)(PreferenceRow).values(
                id=_new_id("pref"),
                response_a=a.id,
                response_b=b.id,
                rater=rater,
                prompt_hash=a.prompt_hash,
                created_at=now,
                **values,
            )
            session.execute(
                insert.on_conflict_do_update(index_elements=["response_a", "response_b", "rater"], set_=values)
            )
            row = session.scalars(
                sa.select(PreferenceRow).where(
                    PreferenceRow.response_a == a.id,
                    PreferenceRow.response_b == b.id,
                    PreferenceRow.rater == rater,
                )
            ).one()
            preference = preference_record(row, a.stage, b.stage)
        if list(preference.response_ids) != list(response_ids):  # answer in the caller's order
            preference.response_ids = (preference.response_ids[1], preference.response_ids[0])
            preference.choice = _flip(preference.choice)  # type: ignore[assignment]
            preference.stage_a, preference.stage_b = preference.stage_b, preference.stage_a
        return preference

    def rank(
        self,
        response_ids: Sequence[str],
        ranking: Sequence[Sequence[str]],
        *,
        rater: str,
        comment: str | None = None,
        prompt: list[dict[str, Any]] | str | None = None,
        completions: Sequence[str] | None = None,
    ) -> Ranking:
        """Store `rater`'s ranking of 2..4 answers to one conversation, replacing their earlier one.

        `ranking` lists groups of ids, best first; ids in one group tie. Every id of `response_ids`
        appears exactly once. With prompt logging off, `prompt` and `completions` (in the order of
        `response_ids`) carry the text.
        """
        if not isinstance(response_ids, (list, tuple)) or not 2 <= len(response_ids) <= MAX_RANKED:
            raise InvalidFeedback(f"'response_ids' must list 2 to {MAX_RANKED} response ids.", "response_ids")
        ids = list(response_ids)
        if not all(isinstance(i, str) for i in ids):
            raise InvalidFeedback("'response_ids' must hold response id strings.", "response_ids")
        if len(set(ids)) != len(ids):
            raise InvalidFeedback("'response_ids' must name each response once.", "response_ids")
        groups = _check_ranking(ranking, ids)
        if completions is not None and (not isinstance(completions, (list, tuple)) or len(completions) != len(ids)):
            raise InvalidFeedback("'completions' must hold one text per response id, in order.", "completions")
        now = utcnow()
        with self._writing() as session:
            rows = [self._generation_row(session, rid, "response_ids") for rid in ids]
            if len({r.prompt_hash for r in rows}) != 1:
                raise InvalidFeedback(
                    "The responses answer different conversations; a ranking orders answers "
                    "to one conversation (the same messages).",
                    "response_ids",
                )
            texts = [_text_for(r, prompt, completions[i] if completions else None) for i, r in enumerate(rows)]
            sent = [t[1] for t in texts]
            values = dict(
                response_ids=ids,
                ranking=groups,
                stages=[r.stage for r in rows],
                prompt=next((t[0] for t in texts if t[0] is not None), None),
                completions=sent if any(t is not None for t in sent) else None,
                prompt_hash=rows[0].prompt_hash,
                comment=comment,
                updated_at=now,
            )
            key = hashlib.sha256(json.dumps(sorted(ids)).encode()).hexdigest()
            insert = _insert(session)(RankingRow).values(
                id=_new_id("rank"), rater=rater, set_key=key, created_at=now, **values
            )
            session.execute(insert.on_conflict_do_update(index_elements=["set_key", "rater"], set_=values))
            row = session.scalars(
                sa.select(RankingRow).where(RankingRow.set_key == key, RankingRow.rater == rater)
            ).one()
            return ranking_record(row)

    def correct(
        self,
        response_id: str,
        completion: str,
        *,
        rater: str,
        comment: str | None = None,
        prompt: list[dict[str, Any]] | str | None = None,
        original: str | None = None,
    ) -> Correction:
        """Store what `rater` says the answer should have been, replacing their earlier correction.

        Empty text, or text equal to the answer (ignoring surrounding whitespace), is refused. With
        prompt logging off, `prompt` and `original` (the answer as given) carry the text.
        """
        if not isinstance(completion, str) or not completion.strip():
            raise InvalidFeedback("'completion' must be the corrected answer; it is empty.", "completion")
        now = utcnow()
        with self._writing() as session:
            generation = self._generation_row(session, response_id, "response_id")
            sent_prompt, sent_original = _text_for(generation, prompt, original, completion_param="original")
            before = generation.completion if generation.completion is not None else sent_original
            if before is not None and completion.strip() == before.strip():
                raise InvalidFeedback(
                    "'completion' is the answer unchanged; a correction must change it.", "completion"
                )
            values = dict(
                completion=completion, prompt=sent_prompt, original=sent_original, comment=comment, updated_at=now
            )
            insert = _insert(session)(CorrectionRow).values(
                id=_new_id("corr"), response_id=response_id, rater=rater, created_at=now, **values
            )
            session.execute(insert.on_conflict_do_update(index_elements=["response_id", "rater"], set_=values))
            row = session.scalars(
                sa.select(CorrectionRow).where(CorrectionRow.response_id == response_id, CorrectionRow.rater == rater)
            ).one()
            return correction_record(row, generation.stage)

    def unrate(self, response_id: str, *, rater: str) -> bool:
        """Withdraw `rater`'s thumbs on an answer (the UI's un-like); True when there was one."""
        with self._writing() as session:
            result = session.execute(
                sa.delete(FeedbackRow).where(FeedbackRow.response_id == response_id, FeedbackRow.rater == rater)
            )
            return result.rowcount > 0

    def delete(self, kind: str, item_id: str, *, rater: str | None = None) -> None:
        """Delete one rating, preference, ranking or correction by id; `rater` set: only if it is theirs.

        Someone else's item is reported as unknown, so ids of others' ratings reveal nothing."""
        model = ROWS[kind]
        with self._writing() as session:
            query = sa.delete(model).where(model.id == item_id)
            if rater is not None:
                query = query.where(model.rater == rater)
            if session.execute(query).rowcount == 0:
                raise UnknownItem(f"No {kind} with id {item_id!r} of yours.", "id")


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _check_messages(messages: Any, param: str) -> list[dict[str, Any]]:
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in messages)
    ):
        raise InvalidFeedback(f"'{param}' must be a non-empty list of {{role, content}} messages.", param)
    return messages


def _insert(session: Session) -> Any:
    """The dialect's INSERT, which has `on_conflict_do_update` on both SQLite and PostgreSQL."""
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _flip(choice: str) -> str:
    return {"a": "b", "b": "a"}.get(choice, choice)


def _text_for(
    generation: GenerationRow, prompt: Any, completion: Any, completion_param: str = "completion"
) -> tuple[Any, str | None]:
    """The text a rating stores beside the log: nothing when the log has the text, else what was sent.

    Sent text must match the log: the prompt must hash to the logged prompt, and when the answer was
    logged the completion must equal it. Chat prompts are message lists; completion prompts, strings.
    """
    logged = generation.completion is not None
    if prompt is not None:
        if generation.kind == "chat":
            _check_messages(prompt, "prompt")
        elif not isinstance(prompt, str):
            raise InvalidFeedback("'prompt' must be the prompt text for a completion.", "prompt")
        if prompt_hash(prompt) != generation.prompt_hash:
            raise InvalidFeedback("'prompt' is not the prompt this response answered.", "prompt")
    if completion is not None:
        if not isinstance(completion, str):
            raise InvalidFeedback(f"'{completion_param}' must be the answer's text.", completion_param)
        if logged and completion != generation.completion:
            raise InvalidFeedback(f"'{completion_param}' is not the answer this response gave.", completion_param)
    if logged:
        return None, None  # the log is the source of truth
    if prompt is None or completion is None:
        raise InvalidFeedback(
            "This server does not log prompts, so a rating must carry the text it rates: send 'prompt' "
            f"(the chat messages, or the prompt text for a completion) and '{completion_param}' (the answer's text).",
            "prompt" if prompt is None else completion_param,
        )
    return prompt, completion


def _check_ranking(ranking: Any, ids: list[str]) -> list[list[str]]:
    """Groups of ids, best first, covering `ids` exactly once each."""
    if not isinstance(ranking, (list, tuple)) or not all(
        isinstance(g, (list, tuple)) and g and all(isinstance(i, str) for i in g) for g in ranking
    ):
        raise InvalidFeedback("'ranking' must be a list of non-empty groups of response ids, best first.", "ranking")
    placed = [i for group in ranking for i in group]
    if sorted(placed) != sorted(ids):
        raise InvalidFeedback("'ranking' must place every id of 'response_ids' exactly once.", "ranking")
    return [list(group) for group in ranking]
