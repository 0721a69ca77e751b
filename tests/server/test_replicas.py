"""Two stagechat replicas, two processes sharing nothing but one PostgreSQL store (the scale-out setup
behind a load balancer): what one stores, the other sees and exports, and concurrent ratings through
both lose nothing. The replicas run the real app on scripted engines (`serve_scripted.py`): the store
is what is under test, not the model."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from server.launcher import ChildServer

pytestmark = pytest.mark.postgres

ADMIN = {"Authorization": "Bearer admin-key"}


@pytest.fixture(scope="module")
def replicas(postgres_server, tmp_path_factory):
    import psycopg

    dsn = postgres_server.replace("postgresql+psycopg", "postgresql") + "/postgres"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE stagechat_replicas")
    env = {"STAGECHAT_DATABASE_URL": f"{postgres_server}/stagechat_replicas", "STAGECHAT_ADMIN_KEY": "admin-key"}
    logs = tmp_path_factory.mktemp("replicas")
    servers = []
    try:
        for name in ("a", "b"):  # one after the other: both would run the schema migration at once
            servers.append(
                ChildServer(
                    lambda port: [sys.executable, "-m", "tests.server.serve_scripted", "--port", str(port)],
                    log=logs / f"{name}.log",
                    env={**env, "STAGECHAT_DATA_DIR": str(logs / name)},
                    timeout=60,
                )
            )
        yield servers
    finally:
        for server in servers:
            server.stop()


def answer(url: str, question: str) -> str:
    r = httpx.post(
        f"{url}/v1/chat/completions",
        headers=ADMIN,
        timeout=30,
        json={"model": "sft", "messages": [{"role": "user", "content": question}]},
    )
    assert r.status_code == 200, r.text
    return r.json()["id"]


def export(url: str) -> list[dict]:
    r = httpx.get(f"{url}/v1/feedback/export?format=kto", headers=ADMIN, timeout=30)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines()]


def test_a_rating_through_one_replica_is_seen_and_exported_through_the_other(replicas):
    a, b = replicas
    response_id = answer(a.url, "What is the capital of Kenya?")
    rated = httpx.post(f"{b.url}/v1/feedback", headers=ADMIN, json={"response_id": response_id, "rating": "up"})
    assert rated.status_code == 200 and rated.json()["stage"] == "sft"  # b found a's logged answer
    listed = httpx.get(f"{a.url}/v1/feedback?stage=sft", headers=ADMIN).json()["data"]
    assert [f["response_id"] for f in listed if f["response_id"] == response_id] == [response_id]
    rows = [row for row in export(a.url) if row["prompt"][0]["content"] == "What is the capital of Kenya?"]
    assert len(rows) == 1 and rows[0]["label"] is True


def test_concurrent_ratings_through_both_replicas_lose_nothing(replicas):
    urls = [s.url for s in replicas]
    ids = [answer(urls[i % 2], f"Question number {i}?") for i in range(40)]

    def rate(job):
        replica, response_id, key, rating = job
        r = httpx.post(
            f"{urls[replica]}/v1/feedback",
            timeout=30,
            headers={"Authorization": f"Bearer {key}"},
            json={"response_id": response_id, "rating": rating},
        )
        return r.status_code

    # Each answer: rater 1 rates it three times at once through both replicas (re-ratings racing: the
    # upsert must neither duplicate nor fail), rater 2 once. 160 writes from 16 threads, two processes.
    jobs = []
    for i, rid in enumerate(ids):
        jobs += [
            (0, rid, "admin-key", "up"),
            (1, rid, "admin-key", "up"),
            (i % 2, rid, "admin-key", "up"),
            ((i + 1) % 2, rid, "rater-2", "up"),
        ]
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(rate, jobs))
    assert set(statuses) == {200}
    for url in urls:  # both replicas see every rating, exactly once per (answer, rater)
        feedback = httpx.get(f"{url}/v1/feedback?limit=1000", headers=ADMIN).json()["data"]
        ours = [(f["response_id"], f["rating"]) for f in feedback if f["response_id"] in set(ids)]
        assert sorted(ours) == sorted([(rid, "up") for rid in ids] * 2)
    exported = {row["prompt"][0]["content"] for row in export(urls[1])}
    assert {f"Question number {i}?" for i in range(40)} <= exported
