"""VectorMemory end to end with the real embedder: ingest, dedup, bad input, tenants, forgetting, reopen."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from logmem.memory import Embedder, MemoryConfig, NotFoundError, StoreError, VectorMemory

REVERSE = "How do I reverse a list in Python?"
REVERSE_PARAPHRASE = "How can I reverse a list in Python?"
SLICE = "Use items[::-1] for a reversed copy, or items.reverse() in place."
IN_PLACE = "Call list.reverse(); it works in place and returns None."
GIT = "How do I undo my last git commit but keep the changes?"
GIT_ANSWER = "Run git reset --soft HEAD~1: the commit goes away, the changes stay staged."
CAPITAL = "What is the capital of Australia?"
CANBERRA = "Canberra is the capital of Australia."
TABLES = ("interactions", "feedback", "experiences", "experience_sources", "conflicts", "instructions")


def rec(id: str, question: str, answer: str, *, user: str = "u1", tenant: str = "default",
        kind: str = "like", timestamp: float = 1_700_000_000) -> dict:
    return {"id": id, "tenant": tenant, "user": user, "timestamp": timestamp,
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "feedback": [{"turn": 1, "kind": kind}]}


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def row_counts(home: Path) -> dict[str, int]:
    with sqlite3.connect(home / "memory.db") as db:
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def files_containing(home: Path, marker: str) -> list[str]:
    return [str(p.relative_to(home)) for p in sorted(home.rglob("*"))
            if p.is_file() and marker.encode() in p.read_bytes()]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def memory(home: Path, embedder: Embedder) -> Iterator[VectorMemory]:
    with VectorMemory(home, embedder=embedder) as m:
        yield m


# --- ingest, search ----------------------------------------------------------------------------

def test_ingest_dicts_then_search(memory: VectorMemory) -> None:
    report = memory.ingest([rec("a", REVERSE, SLICE), rec("b", GIT, GIT_ANSWER), rec("c", CAPITAL, CANBERRA)])

    assert (report.read, report.stored, report.experiences) == (3, 3, 3)
    assert (report.rejected, report.skipped) == (0, 0)
    hits = memory.search("reverse the order of a python list", 3, now=1_700_000_000)
    assert hits[0].trigger == REVERSE and hits[0].response == SLICE
    assert hits[0].support == 1 and hits[0].tenant == "default"
    assert hits[0].utility == pytest.approx(2 / 3)  # Beta(1 + 1, 1 + 0) after one like
    assert all(h.score == pytest.approx(h.sim + h.util + h.rec, abs=1e-5) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.cos >= memory.config.min_sim for h in hits)  # the capital has nothing to do with lists
    assert CANBERRA not in [h.response for h in hits]


def test_search_scores_from_columns_that_match_the_rows(memory: VectorMemory, tmp_path: Path) -> None:
    memory.ingest([rec("a", REVERSE, SLICE), rec("b", GIT, GIT_ANSWER), rec("c", CAPITAL, CANBERRA)])
    (hit,) = memory.search(GIT, 1)
    version = memory.store.add_adapter(tenant="default", base_model="m", method="sft", seed=0, status="promoted",
                                       metrics={}, covered=[hit.id], path=str(tmp_path / "a"))
    memory.store.mark_consolidated(tenant="default", experience_ids=[hit.id], version=version)
    rows = {e.id: e for e in memory.iter_experiences()}

    read = memory.store.get_experiences(tenant="default", ids=[*rows, 10_000])  # an unknown id is left out
    assert sorted(read) == sorted(rows)
    for i, e in read.items():  # the search's one read (the driver's own SQL) gives what the ORM gives
        assert e.vector.dtype == np.float32 and np.array_equal(e.vector, rows[i].vector)
        assert {**vars(e), "vector": None} == {**vars(rows[i]), "vector": None}
    assert read[hit.id].consolidated_in == version
    assert memory.store.get_experiences(tenant="other", ids=list(rows)) == {}  # a tenant reads only its own
    if memory.store.engine.dialect.name == "sqlite":  # each id found by the table's rowid, not through the tenant's
        # index as well (the tenant a check on the row found)
        plan = memory.store.driver_rows("EXPLAIN QUERY PLAN " + memory.store._by_ids_sql(False, 2), ("default", 1, 2))
        assert [p[-1] for p in plan] == ["SEARCH experiences USING INTEGER PRIMARY KEY (rowid=?)"]


def test_search_of_an_empty_memory_or_k_zero_is_empty(memory: VectorMemory) -> None:
    assert memory.search(REVERSE) == []
    memory.ingest([rec("a", REVERSE, SLICE)])
    assert memory.search(REVERSE, 0) == []


def test_ingest_file_and_reingest_changes_nothing(memory: VectorMemory, home: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "logs.jsonl", [rec("a", REVERSE, SLICE), rec("b", GIT, GIT_ANSWER),
                                                 rec("c", CAPITAL, CANBERRA, kind="dislike")])
    first = memory.ingest_file(path)
    stats, rows = memory.stats(), row_counts(home)

    again = memory.ingest_file(path)

    assert (first.stored, first.experiences, first.filtered) == (3, 2, 1)
    assert (again.read, again.skipped, again.stored, again.experiences, again.merged) == (3, 3, 0, 0, 0)
    assert memory.stats().to_json() | {"age_days": None} == stats.to_json() | {"age_days": None}
    assert row_counts(home) == rows
    assert rows["interactions"] == 3 and rows["experiences"] == 2 and rows["feedback"] == 3


def test_a_record_repeated_inside_one_batch_is_stored_once(memory: VectorMemory) -> None:
    report = memory.ingest([rec("a", REVERSE, SLICE), rec("a", REVERSE, SLICE)])

    assert (report.stored, report.skipped, report.experiences) == (1, 1, 1)


def test_records_without_ids_are_idempotent_too(memory: VectorMemory) -> None:
    bare = {"messages": [{"role": "user", "content": GIT}, {"role": "assistant", "content": GIT_ANSWER}],
            "feedback": [{"turn": 1, "kind": "like"}]}

    memory.ingest([bare])
    again = memory.ingest([dict(bare)])

    assert (again.skipped, again.stored) == (1, 0)
    assert memory.stats().interactions == 1


# --- dedup and conflicts -----------------------------------------------------------------------

def test_exact_duplicates_merge(memory: VectorMemory) -> None:
    report = memory.ingest([rec("a", REVERSE, SLICE, user="u1"),
                            rec("b", REVERSE.lower(), SLICE + " ", user="u2")])

    assert (report.stored, report.experiences, report.merged) == (2, 1, 1)
    (hit,) = memory.search(REVERSE, 5)
    assert hit.support == 2 and hit.utility == pytest.approx(3 / 4)  # Beta(1 + 2, 1 + 0)
    assert memory.stats().merged == 1


def test_a_paraphrase_with_an_agreeing_answer_merges(memory: VectorMemory) -> None:
    memory.ingest([rec("a", REVERSE, SLICE)])

    same_words = "Use items[::-1] for a reversed copy or items.reverse() in place"

    report = memory.ingest([rec("b", REVERSE_PARAPHRASE, same_words)])

    assert (report.experiences, report.merged, report.conflicts) == (0, 1, 0)
    (hit,) = memory.search(REVERSE_PARAPHRASE, 5)
    assert (hit.trigger, hit.response, hit.support) == (REVERSE, SLICE, 2)


def test_a_conflicting_answer_is_recorded_and_the_better_supported_one_wins(memory: VectorMemory) -> None:
    memory.ingest([rec("a", REVERSE, SLICE)])

    first = memory.ingest([rec("b", REVERSE_PARAPHRASE, IN_PLACE, user="u2")])

    assert (first.experiences, first.merged, first.conflicts) == (0, 0, 1)
    # one against one: the incumbent stays
    assert [(h.response, h.support) for h in memory.search(REVERSE, 5)] == [(SLICE, 1)]
    assert memory.stats().conflicts == 1

    memory.ingest([rec("c", REVERSE_PARAPHRASE, IN_PLACE, user="u3")])

    assert [(h.trigger, h.response, h.support) for h in memory.search(REVERSE, 5)] == [(REVERSE, IN_PLACE, 2)]
    assert memory.stats().experiences == 1


def test_after_a_swap_a_copy_of_the_old_answer_counts_for_the_old_answer(memory: VectorMemory) -> None:
    memory.ingest([rec("a", REVERSE, SLICE), rec("b", REVERSE_PARAPHRASE, IN_PLACE, user="u2"),
                   rec("c", REVERSE_PARAPHRASE, IN_PLACE, user="u3")])

    report = memory.ingest([rec("d", REVERSE, SLICE, user="u4")])

    assert report.conflicts == 1 and report.merged == 0
    assert [(h.response, h.support) for h in memory.search(REVERSE, 5)] == [(IN_PLACE, 2)]

    memory.ingest([rec("e", REVERSE, SLICE, user="u5")])  # now the old answer has more support again

    assert [(h.response, h.support) for h in memory.search(REVERSE, 5)] == [(SLICE, 3)]


# --- lessons -----------------------------------------------------------------------------------

def test_a_correction_becomes_a_lesson(memory: VectorMemory) -> None:
    obj = {"id": "c1", "messages": [
        {"role": "user", "content": "How do I delete a folder and everything in it on Linux?"},
        {"role": "assistant", "content": "Use rmdir folder."},
        {"role": "user", "content": "No, rmdir fails when the folder is not empty."},
        {"role": "assistant", "content": "Use rm -r folder."},
        {"role": "user", "content": "thanks, that works"}]}

    report = memory.ingest([obj])

    assert report.experiences == 1
    (hit,) = memory.search("remove a directory with its files in linux", 1)
    assert (hit.response, hit.rejected, hit.lesson) == ("Use rm -r folder.", "Use rmdir folder.",
                                                        "No, rmdir fails when the folder is not empty.")
    assert memory.stats().lessons == 1


def test_a_shared_instruction_is_stripped_and_separates_near_duplicates(memory: VectorMemory) -> None:
    sql, poet = "You are a SQL expert. Answer with one query.", "You are a poet. Answer in verse."
    asks = ["Count the users.", "List every table.", "Delete old sessions."]

    answer = "SELECT count(*) FROM users;"

    report = memory.ingest([rec(f"{j}.{i}", f"{head}\n\n{q}", answer)
                            for j, head in enumerate((sql, poet)) for i, q in enumerate(asks)])

    # the same body and answer under another instruction is another experience, not a duplicate
    assert (report.experiences, report.merged, report.conflicts) == (6, 0, 0)
    hits = memory.search(f"{sql}\n\nCount the users.", 2)
    assert {h.trigger for h in hits} == {f"{sql}\n\nCount the users.", f"{poet}\n\nCount the users."}
    assert all(h.cos == pytest.approx(1.0, abs=1e-5) for h in hits)  # only the bodies were embedded


# --- bad input ---------------------------------------------------------------------------------

def test_bad_lines_are_rejected_and_the_valid_ones_kept(memory: VectorMemory, tmp_path: Path) -> None:
    lines = [rec("a", REVERSE, SLICE), "{not json", {"id": "x", "messages": "hi"},
             rec("b", GIT, GIT_ANSWER), {"id": "y", "messages": [{"role": "user", "content": "q"},
                                                              {"role": "assistant", "content": "a"}],
                                          "feedback": [{"turn": 0, "kind": "like"}]},
             "[3]", rec("c", CAPITAL, CANBERRA)]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)

    report = memory.ingest_file(path)

    assert (report.read, report.rejected, report.stored, report.experiences) == (7, 4, 3, 3)
    assert len(report.errors) == 4 and "line 2" in report.errors[0] and "field 'messages'" in report.errors[1]
    side = Path(report.rejected_file or "")
    assert side == tmp_path / "mixed.jsonl.rejected.jsonl"
    rows = [json.loads(x) for x in side.read_text().splitlines()]
    assert [(r["line"], r["field"]) for r in rows] == [(2, None), (3, "messages"), (5, "feedback[0].turn"),
                                                       (6, None)]
    raw = path.read_text().splitlines()
    assert [r["raw"] for r in rows] == [raw[1], raw[2], raw[4], raw[5]]
    found = {h.response for q in (REVERSE, GIT, CAPITAL) for h in memory.search(q, 1)}
    assert found == {SLICE, GIT_ANSWER, CANBERRA}


def test_a_clean_reingest_removes_the_stale_side_file(memory: VectorMemory, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "logs.jsonl", [rec("a", REVERSE, SLICE), "{bad"])
    side = Path(memory.ingest_file(path).rejected_file or "")

    write_jsonl(path, [rec("a", REVERSE, SLICE), "[]"])
    memory.ingest_file(path)

    assert [json.loads(x)["raw"] for x in side.read_text().splitlines()] == ["[]"]  # replaced, not appended


def test_bad_dicts_are_counted_not_stored(memory: VectorMemory) -> None:
    report = memory.ingest([rec("a", REVERSE, SLICE), {"id": "bad", "messages": []}, 42])

    assert (report.read, report.rejected, report.stored) == (3, 2, 1)
    assert "field 'messages'" in report.errors[0] and "expected a JSON object, got int" in report.errors[1]


# --- tenants -----------------------------------------------------------------------------------

def test_tenants_are_isolated(memory: VectorMemory) -> None:
    memory.ingest([rec("a", REVERSE, SLICE, tenant="acme"), rec("a", REVERSE, IN_PLACE, tenant="globex")])

    acme, globex = memory.search(REVERSE, 5, tenant="acme"), memory.search(REVERSE, 5, tenant="globex")

    assert [(h.response, h.tenant) for h in acme] == [(SLICE, "acme")]
    assert [(h.response, h.tenant) for h in globex] == [(IN_PLACE, "globex")]
    assert memory.search(REVERSE, 5) == []  # nothing in the default tenant
    assert memory.record_outcome([acme[0].id], 0.0, tenant="globex") == 0  # ids do not cross tenants
    assert memory.stats("acme").experiences == memory.stats("globex").experiences == 1

    for tenant in ("acme", "globex"):  # what a consolidation job measured (figures computed from its data)
        memory.store.record_serving_mode(tenant=tenant, mode="vote", adapter=None, metric="accuracy",
                                         figures={"vote": 1.0}, reason="measured")
    counts = memory.forget(tenant="acme")

    assert counts == {"experiences": 1, "interactions": 1}
    assert memory.store.serving_mode(tenant="acme") is None  # its serving mode's row goes with it
    assert memory.store.serving_mode(tenant="globex") is not None
    assert memory.search(REVERSE, 5, tenant="acme") == []
    assert [h.response for h in memory.search(REVERSE, 5, tenant="globex")] == [IN_PLACE]
    assert memory.stats().interactions == 1


# --- forgetting --------------------------------------------------------------------------------

def test_forget_a_user_leaves_no_trace_on_disk(memory: VectorMemory, home: Path) -> None:
    marker = "zqxmarker7781"
    memory.ingest([rec("a", f"What does the {marker} flag do in rsync?", f"The {marker} flag copies links.",
                       user="alice"),
                   rec("b", REVERSE, SLICE, user="bob"),
                   rec("c", GIT, GIT_ANSWER, user="alice", kind="dislike")])
    assert files_containing(home, marker)  # the check below can fail

    counts = memory.forget(user="alice")

    assert counts == {"experiences": 1, "interactions": 2}
    assert files_containing(home, marker) == []
    assert files_containing(home, "git reset") == []  # alice's filtered interaction too
    assert memory.stats().index["default"]["size"] == 1
    assert [h.response for h in memory.search(REVERSE, 5)] == [SLICE]
    assert row_counts(home) == {"interactions": 1, "feedback": 1, "experiences": 1, "experience_sources": 1,
                                "conflicts": 0, "instructions": 0}


def test_forget_a_user_keeps_experiences_they_only_agreed_with(memory: VectorMemory) -> None:
    memory.ingest([rec("a", REVERSE, SLICE, user="bob"), rec("b", REVERSE, SLICE, user="alice")])

    counts = memory.forget(user="alice")

    assert counts == {"experiences": 0, "interactions": 1}
    assert [(h.response, h.support) for h in memory.search(REVERSE, 5)] == [(SLICE, 1)]


def test_forget_a_user_in_one_tenant_keeps_their_data_in_another(memory: VectorMemory) -> None:
    memory.ingest([rec("a", REVERSE, SLICE, user="alice", tenant="t1"),
                   rec("a", GIT, GIT_ANSWER, user="alice", tenant="t2")])

    counts = memory.forget(user="alice", tenant="t1")

    assert counts == {"experiences": 1, "interactions": 1}
    assert memory.search(REVERSE, 5, tenant="t1") == []
    assert [h.response for h in memory.search(GIT, 5, tenant="t2")] == [GIT_ANSWER]


def test_forget_a_tenant_leaves_no_trace_on_disk(memory: VectorMemory, home: Path) -> None:
    marker = "qvzmarker5512"
    memory.ingest([rec("a", f"Who maintains {marker}?", f"{marker} is kept by the infra team.", tenant="t1"),
                   rec("b", REVERSE, SLICE, tenant="t2")])
    assert files_containing(home, marker)

    memory.forget(tenant="t1")

    assert files_containing(home, marker) == []
    assert memory.search(f"{marker} maintainer", 5, tenant="t1") == []
    assert [h.response for h in memory.search(REVERSE, 5, tenant="t2")] == [SLICE]


def test_forget_one_experience_by_id(memory: VectorMemory, home: Path) -> None:
    memory.ingest([rec("a", REVERSE, SLICE), rec("b", GIT, GIT_ANSWER)])
    (hit,) = memory.search(REVERSE, 1)

    counts = memory.forget(id=hit.id)

    assert counts == {"experiences": 1, "interactions": 1}  # the interaction it came from holds its text
    assert memory.stats().index["default"]["size"] == memory.stats().experiences == 1
    assert memory.stats().interactions == 1
    assert hit.id not in [h.id for h in memory.search(REVERSE, 5)]
    with sqlite3.connect(home / "memory.db") as db:
        assert db.execute("SELECT count(*) FROM experiences WHERE response = ?", (SLICE,)).fetchone()[0] == 0
    assert files_containing(home, SLICE) == []
    with pytest.raises(NotFoundError, match=f"no experience {hit.id}"):
        memory.forget(id=hit.id)


def test_forget_needs_a_target(memory: VectorMemory) -> None:
    with pytest.raises(ValueError, match="forget needs id=, user= or tenant="):
        memory.forget()


# --- outcomes ----------------------------------------------------------------------------------

def test_record_outcome_moves_utility_and_ranking(memory: VectorMemory, embedder: Embedder) -> None:
    memory.ingest([rec("a", REVERSE, SLICE), rec("b", GIT, GIT_ANSWER)])
    xb = embedder.encode([REVERSE, GIT])
    xq = (xb[0] + xb[1]) / np.linalg.norm(xb[0] + xb[1])  # as close to one as to the other
    ids = {h.response: h.id for h in memory.search_vector(xq, 2)}

    assert memory.record_outcome([ids[SLICE]], False) == 1
    assert memory.record_outcome([ids[SLICE]], 0.0) == 1

    hits = memory.search_vector(xq, 2)
    assert [h.response for h in hits] == [GIT_ANSWER, SLICE]
    assert {h.response: h.utility for h in hits} == pytest.approx({SLICE: 2 / 5, GIT_ANSWER: 2 / 3})

    for _ in range(6):
        memory.record_outcome([ids[SLICE]], True)

    hits = memory.search_vector(xq, 2)
    assert [h.response for h in hits] == [SLICE, GIT_ANSWER]
    assert hits[0].utility == pytest.approx(8 / 11)
    assert memory.record_outcome([10**9], True) == 0
    with pytest.raises(ValueError, match="success must be a bool or a probability in \\[0, 1\\], got 1.5"):
        memory.record_outcome([ids[SLICE]], 1.5)


# --- stats -------------------------------------------------------------------------------------

def test_stats_numbers(memory: VectorMemory) -> None:
    memory.ingest([rec("a", REVERSE, SLICE, timestamp=1_000_000),
                   rec("b", REVERSE, SLICE, timestamp=1_086_400),
                   rec("c", REVERSE_PARAPHRASE, IN_PLACE), rec("d", GIT, GIT_ANSWER, kind="dislike"),
                   {"id": "e", "messages": [{"role": "user", "content": CAPITAL},
                                            {"role": "assistant", "content": CANBERRA}]}])

    s = memory.stats()

    # c conflicts with a's answer, d was disliked, e got no confident signal: three taught nothing
    assert (s.interactions, s.experiences, s.merged, s.conflicts, s.filtered, s.lessons) == (5, 1, 1, 1, 3, 0)
    assert s.index == {"default": {"kind": "flat", "size": 1, "bytes": s.index["default"]["bytes"]}}
    assert s.index["default"]["bytes"] > 384 * 4
    assert s.utility["mean"] == pytest.approx(3 / 4)
    assert s.consolidated_share == 0.0
    assert s.age_days["max"] > 365 * 50  # last supported in 1970
    assert memory.stats("nobody").experiences == 0


def test_a_bad_rating_record_is_rejected(memory: VectorMemory) -> None:
    report = memory.ingest([rec("d", GIT, GIT_ANSWER, kind="rating")])

    assert report.rejected == 1 and "a rating needs a numeric value" in report.errors[0]


# --- reopening and the index file ----------------------------------------------------------------

def test_reopen_gives_the_same_results_without_a_rebuild(home: Path, embedder: Embedder,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    with VectorMemory(home, embedder=embedder) as m:
        m.ingest([rec("a", REVERSE, SLICE), rec("b", GIT, GIT_ANSWER), rec("c", CAPITAL, CANBERRA)])
        before = m.search("undo a commit", 3, now=1_700_000_000)

    with caplog.at_level(logging.INFO, logger="logmem.memory"), VectorMemory(home, embedder=embedder) as m:
        after = m.search("undo a commit", 3, now=1_700_000_000)

    assert [(h.id, h.response) for h in after] == [(h.id, h.response) for h in before]
    assert [h.score for h in after] == pytest.approx([h.score for h in before])
    assert "rebuilding" not in caplog.text


@pytest.mark.parametrize(("beam", "built", "want"), [(0, 128, 96), (0, 64, 128), (300, 128, 300)])
def test_a_tenants_hnsw_index_searches_with_the_beam_for_its_size(home: Path, embedder: Embedder, beam: int,
                                                                  built: int, want: int) -> None:
    """The beam by size and graph is set on the index a search gets (rebuilt, grown by a write, or loaded from its
    file): a graph built with a wide beam (the default) gets a narrower one than a graph built at 64 (an earlier
    version's file); a configured one stays as configured."""
    config = MemoryConfig(index_kind="hnsw", hnsw_ef_search=beam, hnsw_ef_construction=built)
    with VectorMemory(home, embedder=embedder, config=config) as m:
        m.ingest([rec("a", REVERSE, SLICE)])
        assert m.indexes.get("default").ef_search == want  # type: ignore[attr-defined]
        m.ingest([rec("b", GIT, GIT_ANSWER)])
        assert m.indexes.get("default").ef_search == want  # type: ignore[attr-defined]
    reopened = MemoryConfig(index_kind="hnsw", hnsw_ef_search=beam)  # today's build beam: the file keeps its own
    with VectorMemory(home, embedder=embedder, config=reopened) as m:  # from the file
        index = m.indexes.get("default")
        assert (index.ef_construction, index.ef_search) == (built, want)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("kind", "damage"), [
    ("flat", "missing"), ("flat", "corrupt"), ("flat", "truncated"), ("flat", "future"), ("flat", "bad meta"),
    ("exact", "truncated"), ("hnsw", "truncated"),
])
def test_a_damaged_index_file_is_rebuilt_from_sql(home: Path, embedder: Embedder, kind: str, damage: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    config = MemoryConfig(index_kind=kind)
    with VectorMemory(home, embedder=embedder, config=config) as m:
        m.ingest([rec("a", REVERSE, SLICE), rec("b", GIT, GIT_ANSWER)])
        before = [h.id for h in m.search("undo a commit", 2)]
    (idx,) = (home / "index").glob("*.idx")
    meta = idx.with_suffix(".json")
    if damage == "missing":
        idx.unlink()
    elif damage == "corrupt":
        idx.write_bytes(b"\x00garbage" * 10)
    elif damage == "truncated":
        idx.write_bytes(idx.read_bytes()[:60])
    elif damage == "future":  # a generation this database never reached: another database's file
        meta.write_text(json.dumps(json.loads(meta.read_text()) | {"generation": 99}))
    else:
        meta.write_text("{")

    with caplog.at_level(logging.INFO, logger="logmem.memory"), VectorMemory(home, embedder=embedder,
                                                                              config=config) as m:
        after = [h.id for h in m.search("undo a commit", 2)]
        index = m.stats().index["default"]
        assert (index["kind"], index["size"]) == (kind, 2)

    assert after == before
    assert "rebuilding" in caplog.text


def test_a_memory_refuses_another_embedder(home: Path, embedder: Embedder) -> None:
    from logmem.model.embedding import default_embedder

    VectorMemory(home, embedder=embedder).close()

    with pytest.raises(StoreError, match="built with embedder='all-MiniLM-L6-v2', not 'other-model'"):
        VectorMemory(home, embedder=default_embedder(name="other-model"))


def test_consolidated_experiences_can_leave_retrieval(tmp_path: Path, embedder: Embedder) -> None:
    with VectorMemory(tmp_path / "h", embedder=embedder) as mem:
        mem.ingest([rec("a", REVERSE, SLICE), rec("b", GIT, GIT_ANSWER)])
        (hit,) = mem.search(REVERSE, 1)
        version = mem.store.add_adapter(tenant="default", base_model="m", method="sft", seed=0, status="promoted",
                                        metrics={}, covered=[hit.id], path=str(tmp_path / "a"))
        mem.store.mark_consolidated(tenant="default", experience_ids=[hit.id], version=version)
        assert mem.search(REVERSE, 1)[0].id == hit.id  # by default they stay
    with VectorMemory(tmp_path / "h", embedder=embedder, config=MemoryConfig(retrieve_consolidated=False)) as mem:
        assert hit.id not in [h.id for h in mem.search(REVERSE, 5)]
        assert [h.response for h in mem.search(REVERSE, 5)] == [GIT_ANSWER]


# --- requests that used an experience and went well ------------------------------------------------

UNDO = "I committed too early. How do I take the commit back but keep my edits?"
SOFT_RESET = "Run git reset --soft HEAD~1: the commit goes away and the changes stay staged."


def used(id: str, messages: list[dict], retrieved: list[int], *, feedback: list[dict] | None = None,
         user: str = "u2", tenant: str = "default") -> dict:
    return {"id": id, "tenant": tenant, "user": user, "timestamp": 1_700_000_100, "messages": messages,
            "feedback": feedback or [], "metadata": {"retrieved": retrieved}}


def ask(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_requests_that_used_an_experience_and_went_well(memory: VectorMemory) -> None:
    memory.ingest([rec("e1", GIT, GIT_ANSWER)])
    git = memory.search(GIT, 1)[0].id
    memory.ingest([
        used("liked", ask(UNDO, SOFT_RESET), [git], feedback=[{"turn": 1, "kind": "like"}]),
        used("disliked", ask("Undo a commit, keep the files?", SOFT_RESET), [git],
             feedback=[{"turn": 1, "kind": "dislike"}]),
        used("other-answer", ask("Revert my last commit please", "Use git revert HEAD."), [git],
             feedback=[{"turn": 1, "kind": "like"}]),
        # no feedback, the user moved on: a success too weak to be an experience, but it went well
        used("moved-on", [*ask("Oops, wrong commit. Keep the changes, drop the commit?", SOFT_RESET),
                          *ask("And how do I push a tag?", "git push origin v1.0")], [git]),
        # the model answered wrong with the experience in its prompt; the user corrected it to that answer
        used("corrected", [*ask("How to uncommit but keep the work?", "git reset --hard HEAD~1"),
                           {"role": "user", "content": f"No, that loses the changes. {SOFT_RESET}"},
                           {"role": "assistant", "content": SOFT_RESET}], [git],
             feedback=[{"turn": 3, "kind": "like"}]),
    ])
    assert memory.went_well(memory.store.get_experiences(tenant="default", ids=[git]).values()) == {
        git: [UNDO, "Oops, wrong commit. Keep the changes, drop the commit?", "How to uncommit but keep the work?"]}


def test_retrievals_stay_in_their_tenant_and_are_forgotten_with_the_user(memory: VectorMemory, home: Path) -> None:
    memory.ingest([rec("e1", GIT, GIT_ANSWER)])
    git = memory.search(GIT, 1)[0].id
    liked = [{"turn": 1, "kind": "like"}]
    memory.ingest([used("mine", ask(UNDO, SOFT_RESET), [git], feedback=liked),
                   used("theirs", ask("Take back my commit, keep edits?", SOFT_RESET), [git], feedback=liked,
                        tenant="globex")])
    with sqlite3.connect(home / "memory.db") as db:
        assert db.execute("SELECT count(*) FROM retrievals").fetchone()[0] == 1  # globex cannot cite acme's row
    experience = memory.store.get_experiences(tenant="default", ids=[git]).values()
    assert memory.went_well(experience) == {git: [UNDO]}
    memory.forget(user="u2")
    assert memory.went_well(experience) == {}
    with sqlite3.connect(home / "memory.db") as db:
        assert db.execute("SELECT count(*) FROM retrievals").fetchone()[0] == 0


def test_forget_a_user_whose_answer_won_a_conflict_swap(memory: VectorMemory, home: Path) -> None:
    marker = "zqxswap4410"
    answer = f"Call list.reverse() ({marker}); it works in place."
    memory.ingest([rec("a", REVERSE, SLICE, user="alice"), rec("b", REVERSE_PARAPHRASE, answer, user="bob"),
                   rec("c", REVERSE_PARAPHRASE, answer, user="carol")])
    assert [h.response for h in memory.search(REVERSE, 5)] == [answer]  # bob's and carol's words, alice's trigger

    memory.forget(user="bob")

    assert memory.search(REVERSE, 5) == []  # the experience held bob's words: it goes, vector and row
    assert files_containing(home, marker)  # carol said the same words: her own record keeps them
    memory.forget(user="carol")
    assert files_containing(home, marker) == []


def test_forget_a_user_takes_their_leading_paragraphs_off_the_instruction_tally(memory: VectorMemory,
                                                                              home: Path) -> None:
    shared = "Answer in one short sentence."
    private = "zqxpreface5512: my manager Ann asked me this."
    memory.ingest([rec(f"s{i}", f"{shared}\n\n{q}", a, user=u)
                   for i, (q, a, u) in enumerate([(REVERSE, SLICE, "alice"), (GIT, GIT_ANSWER, "bob"),
                                                  (CAPITAL, CANBERRA, "carol")])]
                  + [rec("p", f"{private}\n\nHow do I list files by size?", "Use ls -lS.", user="dave")])
    assert files_containing(home, "zqxpreface5512")  # the check below can fail

    memory.forget(user="dave")

    assert files_containing(home, "zqxpreface5512") == []
    memory.forget(user="alice")
    with sqlite3.connect(home / "memory.db") as db:  # bob and carol sent it too: it stays, counted twice
        assert db.execute("SELECT text, count FROM instructions").fetchall() == [(shared, 2)]


def test_an_ingest_split_among_embedding_threads_stores_what_one_call_would(tmp_path: Path,
                                                                           embedder: Embedder) -> None:
    """`embed_workers` 2 embeds a window's requests in two shares at once: the same experiences, each with the vector
    one call gives its request (to float rounding), in the same order of ids."""
    from logmem.memory.ingest import MIN_SHARE, embed_workers

    words = ["commit", "branch", "merge", "rebase", "stash", "tag", "remote", "fetch", "pull", "push", "diff", "log"]
    records = [rec(f"r{i}", f"How do I {words[i % 12]} in git when {' '.join(words[: 1 + i % 11])} number {i}?",
                   f"Use git {words[i % 12]} ({i}).") for i in range(3 * MIN_SHARE)]
    stored, reports = {}, {}
    for workers in (1, 2):
        with VectorMemory(tmp_path / str(workers), embedder=embedder, config=MemoryConfig(embed_workers=workers)) as m:
            assert m.ingestor.workers == workers
            reports[workers] = m.ingest(records).to_json()
            stored[workers] = m.store.get_experiences(tenant="default", ids=range(1, len(records) + 1))
    one, two = stored[1], stored[2]
    assert reports[1] == reports[2] and reports[1]["experiences"] > len(records) // 2
    assert sorted(one) == sorted(two) and len(one) == reports[1]["experiences"]
    for i in one:
        assert one[i].trigger == two[i].trigger
        np.testing.assert_allclose(one[i].vector, two[i].vector, atol=1e-5)
    assert embed_workers(embedder) >= 1
    assert embed_workers(object()) == 1  # type: ignore[arg-type]  # no `threads`: one call
