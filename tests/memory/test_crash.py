"""Crash recovery: an ingest killed with SIGKILL leaves whole batches, and finishing it loses nothing."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from logmem.memory import Embedder, MemoryConfig, VectorMemory

BATCH = 50
N_RECORDS = 300

CHILD = """
import sys
from logmem.memory import MemoryConfig, VectorMemory
from logmem.model.embedding import default_embedder

path, home, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
with VectorMemory(home, embedder=default_embedder(), config=MemoryConfig(batch_size=batch)) as memory:
    memory.ingest_file(path)
"""

VERBS = ["sort", "merge", "split", "reverse", "parse", "serialize", "compress", "encrypt", "validate",
         "cache"]
ADJECTIVES = ["nested", "huge", "sparse", "sorted", "remote", "temporary", "binary", "unicode", "frozen",
              "shared"]
NOUNS = ["list", "dictionary", "file", "string", "tree", "graph", "matrix", "queue", "socket", "table"]
LANGUAGES = ["Python", "Rust", "Go", "Java", "C"]


def synthetic_log(path: Path) -> list[str]:
    """N_RECORDS short interactions: distinct questions, except that one in ten repeats (under a new id)
    an earlier liked one; one in twenty is disliked. Returns the ids in file order."""
    rng = np.random.default_rng(0)
    combos = [(v, a, n, lang) for v in VERBS for a in ADJECTIVES for n in NOUNS for lang in LANGUAGES]
    picked = [combos[i] for i in rng.choice(len(combos), size=N_RECORDS, replace=False)]
    records: list[dict] = []
    liked: list[tuple[str, str, str, str]] = []
    for i, combo in enumerate(picked):
        repeat, disliked = i % 10 == 9, i % 20 == 3
        verb, adj, noun, lang = liked[int(rng.integers(0, len(liked)))] if repeat else combo
        if not (repeat or disliked):
            liked.append(combo)
        question = f"How do I {verb} a {adj} {noun} in {lang}?"
        answer = f"Call {lang.lower()}.{verb}_{noun}(x, {adj}=True)."
        records.append({"id": f"r{i}", "user": f"u{i % 7}", "timestamp": 1_700_000_000,
                        "messages": [{"role": "user", "content": question},
                                     {"role": "assistant", "content": answer}],
                        "feedback": [{"turn": 1, "kind": "dislike" if disliked else "like"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return [r["id"] for r in records]


def count_interactions(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM interactions").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def kill_after_first_batch(path: Path, home: Path, stderr: Path) -> None:
    """Run an ingest in a child process and SIGKILL it once a batch is committed."""
    with stderr.open("wb") as err:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(home), str(BATCH)],
                                 stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 300
    try:
        while child.poll() is None and time.monotonic() < deadline:
            if (home / "memory.db").exists() and count_interactions(home / "memory.db") >= BATCH:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, stderr.read_text()[-2000:]  # killed, not finished or failed


def experience_rows(home: Path) -> list[tuple]:
    with sqlite3.connect(home / "memory.db") as db:
        return sorted(db.execute("SELECT trigger, response, support, alpha, beta FROM experiences"))


def stored_ids(home: Path) -> set[str]:
    with sqlite3.connect(home / "memory.db") as db:
        return {r[0] for r in db.execute("SELECT ext_id FROM interactions")}


def totals(memory: VectorMemory) -> dict:
    s = memory.stats()
    return {"interactions": s.interactions, "experiences": s.experiences, "merged": s.merged,
            "conflicts": s.conflicts, "filtered": s.filtered, "index": s.index["default"]["size"]}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_an_ingest_killed_mid_way_recovers_and_finishes(tmp_path: Path, embedder: Embedder) -> None:
    log = tmp_path / "logs.jsonl"
    ids = synthetic_log(log)
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    config = MemoryConfig(batch_size=BATCH)

    kill_after_first_batch(log, crashed, tmp_path / "child.err")

    with VectorMemory(crashed, embedder=embedder, config=config) as memory:
        # whole batches, in file order: each batch is one transaction
        n = memory.stats().interactions
        assert n % BATCH == 0 and BATCH <= n < N_RECORDS
        assert stored_ids(crashed) == set(ids[:n])
        # the index (its file never saved: rebuilt from SQL) holds exactly the stored experiences
        before = totals(memory)
        assert before["index"] == before["experiences"] > 0
        vector_ids, xb = memory.store.vectors(tenant="default", d=memory.d)
        assert len(vector_ids) == before["experiences"]
        assert [memory.search_vector(x, 1)[0].id for x in xb] == vector_ids.tolist()

        report = memory.ingest_file(log)

        assert (report.skipped, report.stored) == (n, N_RECORDS - n)
        after = totals(memory)

    with VectorMemory(clean, embedder=embedder, config=config) as memory:
        memory.ingest_file(log)
        want = totals(memory)

    assert after == want
    # every repeat merged, every disliked one filtered, every other one its own experience
    n_repeats, n_disliked = N_RECORDS // 10, N_RECORDS // 20
    assert want == {"interactions": N_RECORDS, "experiences": N_RECORDS - n_repeats - n_disliked,
                    "merged": n_repeats, "conflicts": 0, "filtered": n_disliked,
                    "index": N_RECORDS - n_repeats - n_disliked}
    assert experience_rows(crashed) == experience_rows(clean)
    assert stored_ids(crashed) == set(ids)
