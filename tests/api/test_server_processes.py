"""Real server processes (`uvicorn logmem.api.app:create_app --factory`, configured by `LOGMEM_*`, serving the real
SmolLM2): what the loop needs survives a restart, and two servers on one PostgreSQL act as one service: feedback
given to either reaches an answer of the other, and concurrent writes to both lose and duplicate nothing."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from logmem.memory.store import Store
from servers import ServerProcess
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.slow

QUESTION = "How many bytes are in a kilobyte?"
RIGHT = "In binary units a kilobyte (a kibibyte) is 1024 bytes; in SI units it is 1000 bytes."
# 40 distinct liked records (no two triggers near-duplicates: the highest cosine between them is 0.76)
TEMPLATES = ["How do I bake {x} at home?", "What year was {x} first made?", "Write a haiku about {x}.",
             "Which country exports the most {x}?", "How much does {x} weigh?", "Is {x} safe for dogs?",
             "What colour is {x} usually?", "Who sells {x} near Oslo?"]
SUBJECTS = ["sourdough bread", "a telescope", "green coffee beans", "a violin", "copper wire"]
THREADS, PER_THREAD = 4, 10
EVENT_PREFIX = "evt-"  # the feedback event ids the concurrent writers send


@pytest.fixture
def launch(tmp_path: Path, smollm_folder: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start server processes over the real SmolLM2 (`launch(name, wait=True, **LOGMEM_vars)`); every one is
    stopped at teardown, whatever the test did."""
    started: list[ServerProcess] = []

    def launch(name: str, wait: bool = True, **env: str) -> ServerProcess:
        server = ServerProcess({"LOGMEM_MODEL": str(smollm_folder), "LOGMEM_DTYPE": "float32", "LOGMEM_DEVICE": "cpu",
                                "LOGMEM_WORKER": "false", **env}, tmp_path / f"{name}.log")
        started.append(server)
        return server.start() if wait else server.launch()

    yield launch
    for server in started:
        server.stop()


def client(server: ServerProcess, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def new_key(url: str, tenant: str) -> str:
    store = Store(url)
    try:
        return store.create_key(tenant=tenant)[0]
    finally:
        store.close()


def ask(http: httpx.Client, question: str, max_tokens: int = 16) -> dict[str, Any]:
    answer = http.post("/v1/chat/completions", json={"model": "default", "max_tokens": max_tokens,
                                                     "messages": [{"role": "user", "content": question}]})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def correct_and_find(judge: httpx.Client, search: httpx.Client, answer: dict[str, Any]) -> None:
    """Correct `answer` through `judge`; `search` (maybe another server) then finds the right answer first, with
    the served one as what it replaced."""
    corrected = judge.post(f"/v1/interactions/{answer['id']}/feedback", json={"kind": "correction", "text": RIGHT})
    assert corrected.status_code == 200, corrected.text
    assert corrected.json()["duplicate"] is False and corrected.json()["experiences"] == 1

    found = search.get("/v1/memory/search", params={"q": QUESTION, "k": 3})
    assert found.status_code == 200, found.text
    best = found.json()["hits"][0]
    assert best["response"] == RIGHT and best["rejected"] == answer["choices"][0]["message"]["content"]


def test_feedback_after_a_restart_teaches_the_memory(launch: Callable[..., ServerProcess], tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    key = new_key(f"sqlite:///{home / 'memory.db'}", "acme")

    first = launch("first", LOGMEM_HOME=str(home))
    with client(first, key) as http:
        answer = ask(http, QUESTION)
    assert first.stop() in (0, -signal.SIGTERM)  # shut down gracefully, then re-raised SIGTERM: not killed

    second = launch("second", LOGMEM_HOME=str(home))
    with client(second, key) as http:
        assert http.get(f"/v1/interactions/{answer['id']}").json()["status"] == "answered"
        correct_and_find(http, http, answer)
        assert http.get("/v1/memory/stats").json()["feedback"] == {"correction": 1}


@pytest.mark.postgres
def test_two_servers_on_one_postgresql_lose_and_duplicate_nothing(launch: Callable[..., ServerProcess],
                                                                   tmp_path: Path, pg_db: str) -> None:
    acme, load = new_key(pg_db, "acme"), new_key(pg_db, "load")
    servers = [launch(name, wait=False, LOGMEM_HOME=str(tmp_path / name), LOGMEM_DB=pg_db) for name in ("one", "two")]
    for server in servers:
        server.ready()
    one, two = (client(s, acme) for s in servers)
    with one, two:
        answer = ask(one, QUESTION)
        correct_and_find(two, one, answer)  # rated in server two, learned by server one's index
        answers = [ask(http, f"Name a {thing}.", max_tokens=4)["id"] for http, thing in
                   zip((one, two, one, two), ("colour", "fruit", "river", "planet"))]

    with client(servers[0], load) as l1, client(servers[1], load) as l2, client(servers[0], acme) as a1, \
            client(servers[1], acme) as a2:
        sent = concurrent_writes((l1, l2), (a1, a2), answers)

    engine = create_engine(pg_db)
    try:
        with engine.connect() as sql:
            def count(query: str) -> int:
                return int(sql.execute(text(query)).scalar_one())

            assert count("SELECT count(*) FROM interactions WHERE tenant = 'load'") == THREADS * PER_THREAD
            assert count("SELECT count(*) FROM experiences WHERE tenant = 'load'") == THREADS * PER_THREAD
            assert count("SELECT count(*) FROM interactions WHERE tenant = 'acme'") == 1 + len(answers)
            events = count("SELECT count(*) FROM feedback_events e JOIN interactions i ON i.id = e.interaction_id"
                           " WHERE i.ext_id IN (" + ", ".join(f"'{a}'" for a in answers) + ")")
            assert events == len(sent["events"]) == THREADS * PER_THREAD
            assert count(f"SELECT count(*) FROM feedback_events WHERE event_id LIKE '{EVENT_PREFIX}%'") == events
    finally:
        engine.dispose()
    with client(servers[1], acme) as http:  # each event is in its answer's record once: no update was lost
        noted = [len(http.get(f"/v1/interactions/{a}").json()["feedback"]) for a in answers]
    assert sum(noted) == len(sent["events"])


def concurrent_writes(loads: tuple[httpx.Client, httpx.Client], judges: tuple[httpx.Client, httpx.Client],
                      answers: list[str]) -> dict[str, Any]:
    """THREADS threads, each sending PER_THREAD liked records to the servers in turn, and as many feedback events on
    the served `answers`; every third record and every third event is sent to both servers at once (a client's
    retry after a timeout). Returns what was sent; asserts each call succeeded and each event counted once."""
    questions = [t.format(x=s) for t, s in itertools.product(TEMPLATES, SUBJECTS)]
    assert len(questions) == THREADS * PER_THREAD
    kinds: list[dict[str, Any]] = [{"kind": "like"}, {"kind": "dislike"}, {"kind": "rating", "value": 4},
                                   {"kind": "copy"}]
    counted: dict[str, list[bool]] = {}

    def post(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = http.post(path, json=body)
        assert response.status_code == 200, f"{http.base_url}{path}: {response.status_code} {response.text}"
        return dict(response.json())

    def both(pool: ThreadPoolExecutor, pair: tuple[httpx.Client, httpx.Client], path: str,
             body: dict[str, Any]) -> list[dict[str, Any]]:
        return [f.result() for f in [pool.submit(post, http, path, body) for http in pair]]

    def work(t: int) -> None:
        with ThreadPoolExecutor(2) as pool:
            for i in range(PER_THREAD):
                n = t * PER_THREAD + i
                record = {"id": f"load-{n}", "messages": [
                    {"role": "user", "content": questions[n]},
                    {"role": "assistant", "content": f"Answer {n}: that depends on {questions[n].split()[-1]}"}],
                    "feedback": [{"turn": 1, "kind": "like"}]}
                if n % 3 == 0:
                    reports = both(pool, loads, "/v1/interactions", {"records": [record]})
                    assert sorted((r["stored"], r["skipped"]) for r in reports) == [(0, 1), (1, 0)]
                else:
                    assert post(loads[n % 2], "/v1/interactions", {"records": [record]})["experiences"] == 1
                event = {**kinds[n % len(kinds)], "event_id": f"{EVENT_PREFIX}{n}"}
                path = f"/v1/interactions/{answers[n % len(answers)]}/feedback"
                results = both(pool, judges, path, event) if n % 3 == 1 else [post(judges[n % 2], path, event)]
                counted[event["event_id"]] = [not r["duplicate"] for r in results]

    with ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(work, t) for t in range(THREADS)]:
            future.result()
    assert all(sum(firsts) == 1 for firsts in counted.values()), counted  # a retried event counts once
    return {"events": sorted(counted)}
