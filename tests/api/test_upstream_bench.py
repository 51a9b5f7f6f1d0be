"""benchmarks/bench_upstream.py runs end to end in its --quick form (two real server processes, a small memory)
on small generated logs and questions, into a temporary folder, and reports every figure it promises."""

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


def test_bench_upstream_quick(tmp_path: Path, model_home: Path, smollm_folder: Path) -> None:
    logs, queries = tmp_path / "logs.jsonl", tmp_path / "queries.jsonl"
    with logs.open("w") as fh, queries.open("w") as qh:
        for i in range(50):
            question = ASKS[i // len(SUBJECTS)].format(SUBJECTS[i % len(SUBJECTS)])
            fh.write(json.dumps({"id": f"r{i}", "user": f"u{i % 7}", "feedback": [{"turn": 1, "kind": "like"}],
                                "messages": [{"role": "user", "content": question},
                                             {"role": "assistant", "content": f"Answer {i}."}]}) + "\n")
            qh.write(json.dumps({"messages": [{"role": "user", "content": f"{question} (asked again, {i})"}]}) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_upstream.py"), "--quick", "--logs", str(logs),
                           "--queries", str(queries), "--out", str(tmp_path / "out"), "--size", "500",
                           "--cache", str(model_home)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    result = json.loads((tmp_path / "out" / "upstream.json").read_text())
    assert (tmp_path / "out" / "upstream.md").is_file() and (tmp_path / "out" / "upstream.png").is_file()
    assert result["size"] == 500 and result["real_experiences"] == 50
    for name in ("ttft", "stream", "whole"):
        for side in ("direct", "proxy", "added"):
            figure = result["figures"][f"{side}_{name}"]
            assert figure["n"] == result["pairs"] and figure["p50_ms"] == figure["p50_ms"], (side, name)
    assert result["figures"]["condition"]["n"] == result["figures"]["forward"]["n"] == result["pairs"]
    assert result["figures"]["forward"]["p50_ms"] >= result["figures"]["condition"]["p50_ms"] > 0
    hop = result["figures"]["hop_ttft"]  # the proxy with nothing to retrieve, against the upstream
    assert hop["n"] == result["pairs"] and hop["p50_ms"] == hop["p50_ms"]
    assert result["figures"]["hop_forward"]["p50_ms"] < result["figures"]["forward"]["p50_ms"]  # no conditioning
    relay = result["figures"]["relay_ttft"]  # the bare relay's hop, beside the proxy's
    assert relay["n"] == result["pairs"] and relay["p50_ms"] == relay["p50_ms"]
    assert "bare relay" in (tmp_path / "out" / "upstream.md").read_text()
    assert result["exchanges_per_request"] > 0  # the memory conditioned the requests
