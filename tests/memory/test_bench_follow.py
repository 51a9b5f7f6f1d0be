"""benchmarks/bench_follow.py runs end to end in its --quick form (scripts never rot), and what it reports
holds: the follower saw every ingest, by the log, with no rebuild, and its index matches SQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_follow.py"


def test_bench_follow_quick(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--db", "sqlite", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    (row,) = json.loads((tmp_path / "follow_quick.json").read_text())["rows"]
    assert row["rebuilds_while_following"] == 0 and row["index_matches_sql"]
    assert all(r["seen"] and r["delta_added"] == r["new_experiences"] > 0 for r in row["rounds"])
    assert (tmp_path / "follow_quick.md").read_text().count("| sqlite |") == 1
    assert (tmp_path / "follow_quick.png").stat().st_size > 10_000
