"""What a hostile or careless client meets (issue 33): expected failures of the CLI in one line (the traceback only
with -v), no job row for a consolidation refused before it starts, /metrics that names tenants only for an admin,
and an inspector static route that answers odd names with a JSON 404."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from logmem.api.app import create_app
from logmem.api.cli import EXIT_ERROR, EXIT_OK, main
from logmem.memory.store import Store
from prometheus_client.parser import text_string_to_metric_families

Service = dict[str, Any]
PASSWORD = "s3cret-pw"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The only line on stderr (fails if there are others: a traceback, a log record)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def liked(id: str, question: str, answer: str) -> dict[str, Any]:
    return {"id": id, "user": "ann", "feedback": [{"turn": 1, "kind": "like"}],
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released: connecting to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- the command line -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["jobs"], ["stats"]])
def test_an_unreachable_database_is_one_line_naming_host_and_port(tmp_path: Path, closed_port: int,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  command: list[str]) -> None:
    url = f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:{closed_port}/x"

    code, out, err = run(capsys, "--home", str(tmp_path / "home"), "--db", url, *command)

    assert code == EXIT_ERROR
    line = one_line(err)
    assert line.startswith("logmem: cannot reach the postgresql database at ") and f"127.0.0.1:{closed_port}" in line
    assert PASSWORD not in out + err


def test_with_v_the_traceback_comes_before_the_line(tmp_path: Path, closed_port: int,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:{closed_port}/x"

    code, _, err = run(capsys, "-v", "--home", str(tmp_path / "home"), "--db", url, "jobs")

    assert code == EXIT_ERROR
    assert "Traceback (most recent call last)" in err and "OperationalError" in err
    assert err.strip().splitlines()[-1].startswith("logmem: cannot reach the postgresql database at 127.0.0.1:")
    assert PASSWORD not in err


@pytest.mark.parametrize(("db", "said"), [
    ("nonsense", "logmem: not a database URL: "),
    ("sqlite:///{tmp}/no/such/folder/memory.db", "logmem: cannot open the SQLite database {tmp}/no/such/folder/"),
])
def test_a_bad_database_url_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], db: str,
                                        said: str) -> None:
    code, _, err = run(capsys, "--home", str(tmp_path), "--db", db.format(tmp=tmp_path), "jobs")

    assert code == EXIT_ERROR
    assert one_line(err).startswith(said.format(tmp=tmp_path))


@pytest.mark.parametrize("records", [0, 1])
def test_consolidating_too_little_is_refused_before_any_job_row(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                records: int) -> None:
    home = tmp_path / "home"
    if records:
        logs = tmp_path / "one.jsonl"
        logs.write_text(json.dumps(liked("a", "Which port does Redis use?", "6379")) + "\n")
        assert run(capsys, "--home", str(home), "ingest", str(logs))[0] == EXIT_OK

    code, out, err = run(capsys, "--home", str(home), "consolidate", "--tenant", "default")

    assert code == EXIT_ERROR and out == ""
    assert one_line(err).startswith(f"logmem: tenant 'default' has {records} experience(s) to consolidate")
    store = Store(f"sqlite:///{home / 'memory.db'}")
    try:
        assert store.jobs() == []
        assert store.experience_counts().get("default", 0) == records
    finally:
        store.close()


def test_a_missing_log_file_is_one_line_and_no_other_file_is_read(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    home, missing = tmp_path / "home", tmp_path / "nope.jsonl"
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(liked("a", "Which port does Redis use?", "6379")) + "\n")

    code, out, err = run(capsys, "--home", str(home), "ingest", str(good), str(missing))

    assert code == EXIT_ERROR and out == ""
    assert one_line(err) == f"logmem: {missing}: no such file"
    assert not (home / "memory.db").exists()  # the good file was not ingested before the missing one was found


def test_a_missing_eval_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "eval.jsonl"

    code, _, err = run(capsys, "--home", str(tmp_path / "home"), "eval", "--logs", str(tmp_path / "logs.jsonl"),
                       "--eval", str(missing))

    assert code == EXIT_ERROR
    assert one_line(err) == f"logmem: {missing}: no such file"


# --- HTTP: consolidation refused before a job exists ----------------------------------------------------------
def test_a_consolidation_post_with_too_little_memory_is_409_and_queues_nothing(service: Service) -> None:
    client, acme, globex = service["client"], service["acme"], service["globex"]
    records = [liked(f"r{i}", f"Which colour is the {t}?", "BLUE") for i, t in enumerate(["sky", "sea"])]
    assert client.post("/v1/interactions", headers=acme, json={"records": records}).json()["experiences"] == 2

    r = client.post("/v1/consolidations", headers=globex, json={})  # globex has no experiences; acme's are not its

    assert r.status_code == 409 and r.json()["error"]["type"] == "conflict_error"  # a state to change, not an argument
    assert r.json()["error"]["message"].startswith("tenant 'globex' has 0 experience(s) to consolidate")
    assert client.get("/v1/consolidations", headers=globex).json() == []
    assert service["runtime"].store.jobs() == []
    assert client.post("/v1/consolidations", headers=acme, json={}).status_code == 202  # two are enough


# --- /metrics ------------------------------------------------------------------------------------------------------
def _series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _tenants(text: str) -> set[str]:
    return {dict(labels)["tenant"] for _, labels in _series(text) if "tenant" in dict(labels)}


def _two_tenants(service: Service) -> None:
    client = service["client"]
    for tenant, n in (("acme", 2), ("globex", 1)):
        records = [liked(f"{tenant}{i}", f"Question {i} of {tenant}?", f"Answer {i}.") for i in range(n)]
        assert client.post("/v1/interactions", headers=service[tenant], json={"records": records}).status_code == 200


def test_metrics_without_a_key_name_no_tenant(service: Service) -> None:
    _two_tenants(service)

    r = service["client"].get("/metrics")

    assert r.status_code == 200
    assert _tenants(r.text) == set() and "acme" not in r.text and "globex" not in r.text
    assert _series(r.text)[("logmem_experiences", ())] == 3  # the aggregate stays open
    assert ("logmem_jobs", (("state", "queued"),)) in _series(r.text)


def test_metrics_with_the_admin_key_have_the_tenants_series(service: Service) -> None:
    _two_tenants(service)
    stored, _ = service["runtime"].store.create_key(tenant=None, admin=True)

    for headers in (service["admin"], {"Authorization": f"Bearer {stored}"}):  # the settings' key, a stored one
        series = _series(service["client"].get("/metrics", headers=headers).text)
        assert series[("logmem_memory_experiences", (("tenant", "acme"),))] == 2
        assert series[("logmem_memory_experiences", (("tenant", "globex"),))] == 1


@pytest.mark.parametrize("authorization", ["Bearer not-a-key", "Basic YWRtaW4=", "Bearer "])
def test_metrics_refuse_a_key_that_is_not_an_admins(service: Service, authorization: str) -> None:
    r = service["client"].get("/metrics", headers={"Authorization": authorization})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = service["client"].get("/metrics", headers=service["acme"])  # a tenant's key is not an admin's
    assert r.status_code == 401 and "acme" not in r.text


def test_metrics_per_tenant_setting_opens_the_tenants_series(tmp_path: Path, runtime_for: Any) -> None:
    runtime = runtime_for(tmp_path / "home", metrics_per_tenant=True)
    runtime.ingest([liked("a", "Which port does Redis use?", "6379")], tenant="acme")
    with TestClient(create_app(runtime=runtime)) as client:
        text = client.get("/metrics").text
    assert _tenants(text) == {"acme"}


# --- the inspector's static files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a" * 300 + ".js", "b" * 5000 + ".css", "%00", "main.js%00", "..%2Fapp.py",
                                  "..%2F..%2Fpyproject.toml", "%2E%2E%2Fapp.py", "%2E%2E", "index.html", "MAIN.JS",
                                  "favicon.svg%3F", "nothing.js", "main.js%20"])
def test_odd_static_names_are_a_json_404(service: Service, name: str) -> None:
    r = service["client"].get(f"/inspector/{name}")

    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["type"] == "not_found_error"


def test_the_shipped_static_files_are_still_served(service: Service) -> None:
    for name in ("main.js", "inspector.css", "favicon.svg"):
        assert service["client"].get(f"/inspector/{name}").status_code == 200, name
