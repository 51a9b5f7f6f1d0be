"""`logmem demo` (what `make demo` runs) end to end on the real bundled model, twice in one home."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from logmem.api.cli import DEMO_TENANT, main
from logmem.memory.store import Store

pytestmark = pytest.mark.slow


def test_demo_runs_every_step_and_reuses_its_adapter(tmp_path: Path, smollm_folder: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--home", str(tmp_path / "demo"), "--model", str(smollm_folder), "--dtype", "float32",
            "demo", "--max-new-tokens", "12"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    steps = re.findall(r"^== (\d)\.", out, flags=re.M)
    assert steps[0] == "1" and set(steps) == set("1234567"), out
    assert "read=23 stored=23" in out
    job_line = re.search(r"^   job (\d+) (\w+): held-out NLL ([\d.]+) -> ([\d.]+)", out, flags=re.M)
    assert job_line is not None and job_line.group(2) == "succeeded", out
    assert float(job_line.group(4)) < float(job_line.group(3))

    store = Store(f"sqlite:///{tmp_path / 'demo' / 'memory.db'}")
    try:
        active = store.active_adapter(tenant=DEMO_TENANT)
        assert active is not None and active.status == "promoted"
        assert Path(active.path, "adapter_config.json").is_file()
        consolidated = [e for e in store.iter_experiences(tenant=DEMO_TENANT) if e.consolidated_in == active.version]
        assert sorted(e.id for e in consolidated) == sorted(active.covered)
        assert store.active_adapter(tenant="globex") is None  # the other tenant's model is untouched
    finally:
        store.close()

    assert main(argv) == 0  # again in the same home: ingest skips what it has, the adapter is reused
    again = capsys.readouterr().out
    assert f"adapter {active.version} already active" in again
    assert "read=23 stored=0" in again
