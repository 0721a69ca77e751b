"""What raters said, read: pages of one's ratings, preferences, rankings and corrections for the API;
the resolved texts the exports turn into datasets; the judgements the leaderboard fits.

What it knows: the queries, newest-first paging with an `after` cursor on (updated_at, seq), and
which text is the truth for an item (the text a rating carried, else the log's).

What it does not know: TRL's formats (`server/export.py`), the leaderboard's statistics
(`server/leaderboard.py`), or writes (`feedback.py`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from server.store.base import StoreBase
from server.store.records import (
    RATINGS,
    CorrectedAnswer,
    Feedback,
    InvalidFeedback,
    Judgement,
    PreferredPair,
    RatedAnswer,
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


class FeedbackReads(StoreBase):
    """The store's listing, export and leaderboard reads (a mixin of `Store`)."""

    # -- pages for the API --------------------------------------------------------------------

    def list_items(
        self,
        kind: str,
        *,
        rater: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> tuple[list[Any], bool]:
        """Preferences, rankings or corrections newest first, like `list_feedback`; (page, has_more)."""
        if kind == "feedback":
            return self.list_feedback(rater=rater, since=since, until=until, limit=limit, after=after)
        if not 1 <= limit <= 1000:
            raise InvalidFeedback("'limit' must be between 1 and 1000.", "limit")
        model: Any = ROWS[kind]
        with self._read() as session:
            query = _newest_first_page(
                session, sa.select(model), model, kind, rater=rater, since=since, until=until, limit=limit, after=after
            )
            rows = session.scalars(query).all()
            page = [self._plain(session, kind, row) for row in rows[:limit]]
        return page, len(rows) > limit

    @staticmethod
    def _plain(session: Session, kind: str, row: Any) -> Any:
        def stage(response_id: str) -> str:
            return session.get(GenerationRow, response_id).stage  # type: ignore[union-attr]

        if kind == "preference":
            return preference_record(row, stage(row.response_a), stage(row.response_b))
        if kind == "ranking":
            return ranking_record(row)
        return correction_record(row, stage(row.response_id))

    def list_feedback(
        self,
        *,
        stage: str | None = None,
        rating: str | None = None,
        rater: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> tuple[list[Feedback], bool]:
        """Ratings newest first (by when last rated), filtered; returns (page, has_more).

        `after` is the id of the last item of the previous page; `since`/`until` bound `updated_at`
        (inclusive, exclusive).
        """
        if rating is not None and rating not in RATINGS:
            raise InvalidFeedback(f"'rating' must be one of {', '.join(RATINGS)}; got {rating!r}.", "rating")
        if not 1 <= limit <= 1000:
            raise InvalidFeedback("'limit' must be between 1 and 1000.", "limit")
        query = sa.select(FeedbackRow, GenerationRow.stage).join(
            GenerationRow, GenerationRow.id == FeedbackRow.response_id
        )
        if stage is not None:
            query = query.where(GenerationRow.stage == stage)
        if rating is not None:
            query = query.where(FeedbackRow.rating == rating)
        with self._read() as session:
            query = _newest_first_page(
                session, query, FeedbackRow, "feedback", rater=rater, since=since, until=until, limit=limit, after=after
            )
            rows = session.execute(query).all()
        page = [feedback_record(row, stage_) for row, stage_ in rows[:limit]]
        return page, len(rows) > limit

    # -- export inputs (formats live in server/export.py) -------------------------------------

    def iter_rated_answers(
        self, *, stage: str | None = None, exclude_raters: Collection[str] = ()
    ) -> Iterator[RatedAnswer]:
        """Every rating of a chat answer, with its text, grouped by prompt (ordered by prompt_hash).

        Completions-API answers (base-model prompts, no chat messages) are left out: the export
        formats are TRL's conversational ones.
        """
        query = (
            sa.select(FeedbackRow, GenerationRow)
            .join(GenerationRow, GenerationRow.id == FeedbackRow.response_id)
            .where(GenerationRow.kind == "chat")
            .order_by(GenerationRow.prompt_hash, FeedbackRow.seq)
        )
        if stage is not None:
            query = query.where(GenerationRow.stage == stage)
        if exclude_raters:
            query = query.where(FeedbackRow.rater.not_in(list(exclude_raters)))
        with self._read() as session:
            for fb, gen in session.execute(query.execution_options(yield_per=500)):
                prompt = fb.prompt if fb.prompt is not None else gen.messages
                completion = fb.completion if fb.completion is not None else gen.completion
                if prompt is None or completion is None:
                    continue  # text never stored (cannot happen through `rate`)
                yield RatedAnswer(
                    gen.id, gen.stage, gen.prompt_hash, prompt, completion, fb.rating == "up", rated_at=fb.updated_at
                )

    def iter_preferred_pairs(
        self, *, stage: str | None = None, exclude_raters: Collection[str] = ()
    ) -> Iterator[PreferredPair]:
        """Every preference with a winner (choice a or b) between two chat answers, with text."""
        gen_a, gen_b = aliased(GenerationRow), aliased(GenerationRow)
        query = (
            sa.select(PreferenceRow, gen_a, gen_b)
            .join(gen_a, gen_a.id == PreferenceRow.response_a)
            .join(gen_b, gen_b.id == PreferenceRow.response_b)
            .where(PreferenceRow.choice.in_(("a", "b")), gen_a.kind == "chat")
            .order_by(PreferenceRow.prompt_hash, PreferenceRow.seq)
        )
        if stage is not None:
            query = query.where(sa.or_(gen_a.stage == stage, gen_b.stage == stage))
        if exclude_raters:
            query = query.where(PreferenceRow.rater.not_in(list(exclude_raters)))
        with self._read() as session:
            for pref, a, b in session.execute(query.execution_options(yield_per=500)):
                prompt = pref.prompt if pref.prompt is not None else a.messages
                text_a = pref.completion_a if pref.completion_a is not None else a.completion
                text_b = pref.completion_b if pref.completion_b is not None else b.completion
                if prompt is None or text_a is None or text_b is None:
                    continue
                chosen, rejected = (text_a, text_b) if pref.choice == "a" else (text_b, text_a)
                stages = (a.stage, b.stage) if pref.choice == "a" else (b.stage, a.stage)
                yield PreferredPair(pref.prompt_hash, prompt, chosen, rejected, stages=stages, rated_at=pref.updated_at)

    def iter_ranked_pairs(
        self, *, stage: str | None = None, exclude_raters: Collection[str] = ()
    ) -> Iterator[PreferredPair]:
        """Every ordered pair of every ranking of chat answers: each answer of a better group is chosen
        over each answer of every worse group (answers in one group tie and give no pair)."""
        query = sa.select(RankingRow).order_by(RankingRow.prompt_hash, RankingRow.seq)
        if exclude_raters:
            query = query.where(RankingRow.rater.not_in(list(exclude_raters)))
        with self._read() as session:
            for ranking in session.scalars(query).all():  # .all(): the loop queries the same session
                if stage is not None and stage not in ranking.stages:
                    continue
                gens = {
                    g.id: g
                    for g in session.scalars(sa.select(GenerationRow).where(GenerationRow.id.in_(ranking.response_ids)))
                }
                if any(g.kind != "chat" for g in gens.values()) or len(gens) != len(ranking.response_ids):
                    continue
                first = gens[ranking.response_ids[0]]
                prompt = ranking.prompt if ranking.prompt is not None else first.messages
                texts = {
                    rid: (
                        ranking.completions[i]
                        if ranking.completions and ranking.completions[i] is not None
                        else gens[rid].completion
                    )
                    for i, rid in enumerate(ranking.response_ids)
                }
                if prompt is None or any(t is None for t in texts.values()):
                    continue
                for g, better in enumerate(ranking.ranking):
                    for worse in ranking.ranking[g + 1 :]:
                        for w in better:
                            for lower in worse:
                                yield PreferredPair(
                                    ranking.prompt_hash,
                                    prompt,
                                    texts[w],
                                    texts[lower],
                                    source="ranking",
                                    stages=(gens[w].stage, gens[lower].stage),
                                    rated_at=ranking.updated_at,
                                )

    def iter_corrections(
        self, *, stage: str | None = None, exclude_raters: Collection[str] = ()
    ) -> Iterator[CorrectedAnswer]:
        """Every correction of a chat answer, with the prompt and the original text resolved."""
        query = (
            sa.select(CorrectionRow, GenerationRow)
            .join(GenerationRow, GenerationRow.id == CorrectionRow.response_id)
            .where(GenerationRow.kind == "chat")
            .order_by(GenerationRow.prompt_hash, CorrectionRow.seq)
        )
        if stage is not None:
            query = query.where(GenerationRow.stage == stage)
        if exclude_raters:
            query = query.where(CorrectionRow.rater.not_in(list(exclude_raters)))
        with self._read() as session:
            for corr, gen in session.execute(query.execution_options(yield_per=500)):
                prompt = corr.prompt if corr.prompt is not None else gen.messages
                original = corr.original if corr.original is not None else gen.completion
                if prompt is None or original is None:
                    continue
                yield CorrectedAnswer(
                    gen.id, gen.stage, gen.prompt_hash, prompt, original, corr.completion, rated_at=corr.updated_at
                )

    def iter_judgements(
        self, *, since: datetime | None = None, until: datetime | None = None, rater: str | None = None
    ) -> Iterator[Judgement]:
        """Every preference (as a ranking of two) and every ranking, for the leaderboard; filtered by when
        last stated (`since` inclusive, `until` exclusive) and by rater."""
        groups_of = {"a": [[0], [1]], "b": [[1], [0]], "tie": [[0, 1]], "both_bad": [[0, 1]]}
        gen_a, gen_b = aliased(GenerationRow), aliased(GenerationRow)
        prefs = (
            sa.select(PreferenceRow, gen_a.stage, gen_b.stage)
            .join(gen_a, gen_a.id == PreferenceRow.response_a)
            .join(gen_b, gen_b.id == PreferenceRow.response_b)
            .order_by(PreferenceRow.seq)
        )
        ranks = sa.select(RankingRow).order_by(RankingRow.seq)
        for model in (PreferenceRow, RankingRow):
            conditions = []
            if since is not None:
                conditions.append(model.updated_at >= since)
            if until is not None:
                conditions.append(model.updated_at < until)
            if rater is not None:
                conditions.append(model.rater == rater)
            if model is PreferenceRow:
                prefs = prefs.where(*conditions)
            else:
                ranks = ranks.where(*conditions)
        with self._read() as session:
            for pref, stage_a, stage_b in session.execute(prefs.execution_options(yield_per=1000)):
                yield Judgement(
                    pref.id,
                    pref.rater,
                    [pref.response_a, pref.response_b],
                    [stage_a, stage_b],
                    groups_of[pref.choice],
                    pref.updated_at,
                )
            for row in session.scalars(ranks.execution_options(yield_per=1000)):
                index = {rid: i for i, rid in enumerate(row.response_ids)}
                yield Judgement(
                    row.id,
                    row.rater,
                    list(row.response_ids),
                    list(row.stages),
                    [[index[rid] for rid in group] for group in row.ranking],
                    row.updated_at,
                )


def _newest_first_page(
    session: Session,
    query: Any,
    model: Any,
    kind: str,
    *,
    rater: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    after: str | None,
) -> Any:
    """`query` on `model` filtered by rater and `updated_at`, newest first, one page (+1 row to tell
    whether more follow) after the row whose id is `after`."""
    if rater is not None:
        query = query.where(model.rater == rater)
    if since is not None:
        query = query.where(model.updated_at >= since)
    if until is not None:
        query = query.where(model.updated_at < until)
    if after is not None:
        cursor = session.scalars(sa.select(model).where(model.id == after)).one_or_none()
        if cursor is None:
            raise InvalidFeedback(f"'after' names no {kind}: {after!r}.", "after")
        # (updated_at, seq) is a total order, so pages neither skip nor repeat rows.
        query = query.where(
            sa.or_(
                model.updated_at < cursor.updated_at,
                sa.and_(model.updated_at == cursor.updated_at, model.seq < cursor.seq),
            )
        )
    return query.order_by(model.updated_at.desc(), model.seq.desc()).limit(limit + 1)
