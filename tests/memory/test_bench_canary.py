"""benchmarks/bench_canary.py runs end to end in its --quick form (scripts never rot), and what it reports holds:
verdict shares add up, the issue's figures are computed from the cells, and the equal case is rarely promoted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_canary.py"


def test_bench_canary_quick(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    result = json.loads((tmp_path / "canary_quick.json").read_text())
    cells = result["cells"]
    assert len(cells) == 4 * 2  # the cases by the quick shares
    for cell in cells.values():
        assert cell["runs"] == 40
        assert abs(cell["promote"] + cell["rollback"] + cell["no_decision"] - 1.0) < 1e-9
        assert cell["rated_p50"] <= cell["rated_p90"] and cell["rated_p50"] <= cell["tenant_p50"]
    assert all(cells[f"same@{s}"]["promote"] <= 0.05 for s in (0.1, 0.5))
    assert result["done_when"]["better promoted >= 90%"] == all(
        c["promote"] >= 0.9 for c in cells.values() if c["case"] == "better")
    assert "| better | 0.80 | 10% |" in (tmp_path / "canary_quick.md").read_text()
    assert (tmp_path / "canary_quick.png").stat().st_size > 10_000
