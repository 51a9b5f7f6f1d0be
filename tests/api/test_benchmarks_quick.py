"""The service, feedback and peers benchmarks run end to end in their --quick form, on a small generated log (no
shared data), into a temporary folder, and their JSON says nothing failed and nothing was lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SUBJECTS = ["Redis", "PostgreSQL", "nginx", "Kubernetes", "Docker", "Python", "Rust", "git", "SQLite", "Kafka"]
ASKS = ["Which port does {} use by default?", "How do I upgrade {} without downtime?",
        "What is the configuration file of {} called?", "Why does {} use so much memory?", "How do I back up {}?"]


@pytest.fixture(scope="module")
def small_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 native-schema records: distinct questions, each answered and liked."""
    path = tmp_path_factory.mktemp("bench-logs") / "logs.jsonl"
    with path.open("w") as fh:
        for i in range(50):
            subject, ask = SUBJECTS[i % len(SUBJECTS)], ASKS[i // len(SUBJECTS)]
            fh.write(json.dumps({"id": f"r{i}", "tenant": "default", "user": f"u{i % 7}", "messages": [
                {"role": "user", "content": ask.format(subject)},
                {"role": "assistant", "content": f"For {subject}: answer {i}, see the {subject} manual."}],
                "feedback": [{"turn": 1, "kind": "like"}]}) + "\n")
    return path


def run(script: str, *args: str, timeout: float = 600) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{script} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_bench_service_quick(tmp_path: Path, small_logs: Path, smollm_folder: Path) -> None:
    run("bench_service.py", "--logs", str(small_logs), "--out", str(tmp_path), "--model", str(smollm_folder))
    result = json.loads((tmp_path / "service.json").read_text())
    assert (tmp_path / "service.md").is_file() and (tmp_path / "service.png").is_file()
    routes = {row["route"]: row for row in result["load"]}
    assert set(routes) == {"GET /v1/memory/search", "POST /v1/chat/completions", "POST /v1/interactions/{id}/feedback"}
    for row in routes.values():
        assert row["requests"] > 0 and row["errors"] == 0, row
        assert {"clients", "duration_s", "req_per_s", "p50_ms", "p95_ms"} <= set(row)
    lost = result["nothing_lost"]
    assert lost["nothing_lost"], lost
    assert lost["feedback_events_rows"] == lost["feedback_events_sent"] > 0
    assert lost["retries_answered_duplicate"] == lost["feedback_retries_sent"]
    assert [(r["call"].split()[0], r["call"].split()[-1]) for r in result["overhead"]] == [
        ("GET", "httpx.Client"), ("GET", "http.client"), ("POST", "httpx.Client"), ("POST", "http.client")]
    for row in result["overhead"]:
        assert row["n"] == result["args"]["overhead_n"] and row["http_p50_ms"] > 0 and row["inprocess_p50_ms"] > 0


def test_bench_feedback_quick(tmp_path: Path, small_logs: Path) -> None:
    run("bench_feedback.py", "--logs", str(small_logs), "--out", str(tmp_path))
    result = json.loads((tmp_path / "feedback_cost.json").read_text())
    assert (tmp_path / "feedback_cost.md").is_file()
    assert [r["size"] for r in result["rows"]] == [1000, 5000]
    for row in result["rows"]:
        assert row["experiences_after"] > row["size"]  # the likes and corrections added experiences
        assert row["full_write"]["p50_ms"] > 0 and row["full_write"]["file_mb"] > 0
        for kind in ("like", "correction"):
            series = row["feedback"][kind]
            assert series["n"] == len(series["ms"]) > 0 and series["new_experiences"] > 0
            assert 0 < series["p50_ms"] <= series["p95_ms"]
            assert row[f"{kind}_before_ms"] > row[f"{kind}_amortized_ms"]


def test_bench_peers_quick(tmp_path: Path, small_logs: Path) -> None:
    run("bench_peers.py", "--logs", str(small_logs), "--out", str(tmp_path))
    result = json.loads((tmp_path / "peers.json").read_text())
    assert (tmp_path / "peers.md").is_file() and (tmp_path / "peers.png").is_file()
    systems = {"logmem", "chromadb", "mem0"}
    for data in (small_logs.parent.name, "sharegpt-100"):  # both log sets ingested by every system
        rows = [r for r in result["ingest"] if r["data"] == data]
        assert {r["system"] for r in rows} == systems and all(r["per_s"] > 0 for r in rows), rows
    logmem = next(r for r in result["ingest"] if r["system"] == "logmem")
    assert logmem["stages_s"]["embed"] > 0 and set(logmem["stages_s"]) >= {"parse", "distil", "index"}
    assert {r["system"] for r in result["search"]} == systems
    assert all(r["queries"] == 20 and r["p50_ms"] > 0 for r in result["search"])
    grown = [r for r in result["search"] if r["memory"] == "grown"]  # filled in bulk with the same vectors
    assert {(r["system"], r["size"]) for r in grown} == {("logmem", 1000), ("chromadb", 1000)}


def test_bench_learning_quick(tmp_path: Path, small_logs: Path, smollm_folder: Path) -> None:
    """The learning curve on a short stream: answers rated by the simulated user, a policy job run."""
    items = tmp_path / "eval.jsonl"
    items.write_text("".join(json.dumps({"id": f"e{i}", "messages": [{"role": "user", "content": f"How do I back up "
                                                                      f"{s}?"}], "reference": [f"see the {s} manual"]})
                             + "\n" for i, s in enumerate(SUBJECTS[:4])))
    run("bench_learning.py", "--logs", str(small_logs), "--eval", str(items), "--out", str(tmp_path),
        "--model", str(smollm_folder), "--p-missing", "0", timeout=1500)  # ~3 min alone; 10+ on busy cores
    result = json.loads((tmp_path / "learning.json").read_text())
    assert (tmp_path / "learning.md").is_file() and (tmp_path / "learning.png").is_file()
    assert result["served"]["rated"] == 8  # every answer rated (--p-missing 0)
    assert [p["interactions"] for p in result["points"]] == [8]
    assert {"base", "memory", "vote", "knn"} <= set(result["points"][0]["accuracy"])
    assert result["jobs"] and all(j["status"] in ("succeeded", "rejected") for j in result["jobs"])


def test_bench_conditioning_quick(tmp_path: Path, small_logs: Path, smollm_folder: Path) -> None:
    """The same requests answered with and without memory, the same number of tokens each."""
    items = tmp_path / "eval.jsonl"
    items.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"How do I back up {s}?"}],
                                         "reference": [f"see the {s} manual"]}) + "\n" for s in SUBJECTS[:3]))
    run("bench_conditioning.py", "--logs", str(small_logs), "--eval", str(items), "--out", str(tmp_path),
        "--model", str(smollm_folder))
    result = json.loads((tmp_path / "conditioning.json").read_text())
    assert (tmp_path / "conditioning.md").is_file() and (tmp_path / "conditioning.png").is_file()
    assert len(result["pairs"]) == 3
    for pair in result["pairs"]:  # memory found the logged twin of each request and lengthened its prompt
        assert pair["with"]["experiences"] >= 1 and pair["without"]["experiences"] == 0
        assert pair["with"]["prompt_tokens"] > pair["without"]["prompt_tokens"]
    assert {"overhead_ms", "overhead_share", "retrieval_ms", "prompt_ms", "prefill_ms"} <= set(result["summary"])


def test_bench_footprint_quick(tmp_path: Path) -> None:
    """Bytes per experience and the RSS of a fresh searching process, for the default kind and hnsw_sq8."""
    run("bench_footprint.py", "--out", str(tmp_path))
    result = json.loads((tmp_path / "footprint_quick.json").read_text())
    assert (tmp_path / "footprint_quick.md").is_file() and (tmp_path / "footprint_quick.png").is_file()
    assert [(r["kind"], r["resolved_kind"]) for r in result["rows"]] == [("hnsw", "hnsw"), ("hnsw_sq8", "hnsw_sq8")]
    for row in result["rows"]:
        searched = row["search"]
        assert searched["rebuilds"] == 0 and searched["loaded_kind"] == row["resolved_kind"]  # loaded from its file
        assert row["vectors"] == row["size"] == 5000 and row["sql_bytes_per_experience"] > 1536
        assert all(p["recall"] >= 0.9 for p in searched["sweep"])
        assert 0 < searched["rss_loaded"]["VmRSS"] <= searched["rss_text_searched"]["VmHWM"]
        assert searched["search_vector"]["p50_ms"] > 0
    sq8 = result["rows"][1]
    assert sq8["index_file_bytes_per_vector"] > 1536  # the float vectors are in its file, beside the codes


def test_bench_index_cold_quick(tmp_path: Path) -> None:
    """Flat against two HNSW graphs (the default, and the one of earlier versions), each searched after the embedder
    ran with the beam the memory gives it, at two small sizes: the exact index is HNSW's truth."""
    run("bench_index_cold.py", "--out", str(tmp_path), "--cache", str(tmp_path / "cache"))
    result = json.loads((tmp_path / "index_cold.json").read_text())
    assert (tmp_path / "index_cold.md").is_file() and (tmp_path / "index_cold.png").is_file()
    assert [r["size"] for r in result["rows"]] == [300, 1_500]
    for row in result["rows"]:
        assert row["queries"] == 20 and row["flat_p50_ms"] > 0
        for graph, beam in (("hnsw", 96), ("hnsw_m32_efc64", 128)):
            assert row[f"{graph}_p50_ms"] > 0 and row[f"{graph}_build_s"] > 0 and row[f"{graph}_ef_search"] == beam
            assert row[f"{graph}_recall_top5"] >= 0.95 and row[f"{graph}_recall_top32"] >= 0.9


def test_bench_limits_quick(tmp_path: Path, smollm_folder: Path) -> None:
    run("bench_limits.py", "--out", str(tmp_path), "--model", str(smollm_folder), "--new-tokens", "256")
    result = json.loads((tmp_path / "limits.json").read_text())
    assert (tmp_path / "limits.md").is_file()
    assert set(result["refusals"]) == {"990 KB (by its length)", "300 KB (counted)"}
    assert all(s["n"] == 3 and s["p50_ms"] > 0 for s in result["refusals"].values())
    assert set(result["abandoned"]) == {"whole", "streamed"}
    assert [s["cancelled"] for s in result["sigterm"]] == [True]  # the stream ended with the cancellation


def test_bench_generation_quick(tmp_path: Path, smollm_folder: Path) -> None:
    run("bench_generation.py", "--out", str(tmp_path), "--model", str(smollm_folder))
    result = json.loads((tmp_path / "generation.json").read_text())
    assert (tmp_path / "generation.md").is_file() and (tmp_path / "generation.png").is_file()
    places = {"main", "request thread", "fresh thread", "stream"}
    assert {(r["threads"], r["place"]) for r in result["rows"]} == {(n, p) for n in (os.cpu_count(), 0) for p in places}
    assert all(r["tokens_per_s"] > 0 for r in result["rows"])


def test_make_freetext_and_bench_freetext_quick(tmp_path: Path, smollm_folder: Path) -> None:
    """The free-text set is the same for the same seed, teaches each fact once (half by corrections) and asks in
    other words; the benchmark answers a few of its questions before and with the default conditioning."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for folder in ("a", "b"):
        subprocess.run([sys.executable, str(BENCHMARKS / "make_freetext.py"), "--out", str(tmp_path / folder),
                        "--seed", "3", "--offices", "4", "--products", "4"], env=env, check=True, capture_output=True)
    logs, questions = (tmp_path / "a" / "logs.jsonl"), (tmp_path / "a" / "dev.eval.jsonl")
    assert logs.read_bytes() == (tmp_path / "b" / "logs.jsonl").read_bytes()
    records = [json.loads(line) for line in logs.read_text().splitlines()]
    items = [json.loads(line) for line in questions.read_text().splitlines()]
    kinds = [f["kind"] for r in records for f in r["feedback"]]
    assert kinds.count("correction") == 12 and len(items) == 2 * 24 and len({i["reference"] for i in items}) == 24
    asked = {m["content"] for r in records for m in r["messages"] if m["role"] == "user"}
    assert not asked & {i["messages"][0]["content"] for i in items}
    run("bench_freetext.py", "--logs", str(logs), "--eval", str(questions), "--out", str(tmp_path),
        "--model", str(smollm_folder), "--tokens", "12")
    result = json.loads((tmp_path / "freetext.json").read_text())
    assert (tmp_path / "freetext.md").is_file() and (tmp_path / "freetext.png").is_file()
    before, default = result["options"]["before"], result["options"]["default"]
    assert set(result["options"]) == {"before", "default"} and before["n"] == default["n"] == 8
    assert default["exchanges"] < before["exchanges"] and len(result["reuse_curve"]) == 5  # the prompt keeps to fewer
