"""One meaning for a correction, whichever way it arrives: the feedback route on a served answer, the same record in a
batch over HTTP, and the same record in a log file ingested by the CLI each teach the same experience (trigger, the
right answer, the failed answer as rejected, the lesson), and the corrected fact is retrieved first for its request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from logmem.api.cli import EXIT_OK, main

QUESTION = "What is the door code of the Lisbon office?"
RIGHT = "The Lisbon office door code is 4471."
Service = dict[str, Any]


def taught(client: Any, headers: dict[str, str]) -> list[tuple[str, str, str | None, str | None]]:
    page = client.get("/v1/memory/experiences", headers=headers).json()["data"]
    return sorted((e["trigger"], e["response"], e["rejected"], e["lesson"]) for e in page)


def test_a_correction_teaches_the_same_by_the_route_a_batch_and_a_file(service: Service, tmp_path: Path) -> None:
    client, runtime, acme, globex = service["client"], service["runtime"], service["acme"], service["globex"]
    served = client.post("/v1/chat/completions", headers=acme, json={
        "model": "default", "max_tokens": 6, "messages": [{"role": "user", "content": QUESTION}]}).json()
    wrong = served["choices"][0]["message"]["content"]
    assert client.post(f"/v1/interactions/{served['id']}/feedback", headers=acme,
                       json={"kind": "correction", "text": RIGHT}).status_code == 200
    record = {"id": "logged-1", "messages": [{"role": "user", "content": QUESTION},
                                             {"role": "assistant", "content": wrong}],
              "feedback": [{"turn": 1, "kind": "correction", "text": RIGHT}]}
    assert client.post("/v1/interactions", headers=globex, json={"records": [record]}).json()["experiences"] == 1
    logs = tmp_path / "logs.jsonl"
    logs.write_text(json.dumps({**record, "tenant": "initech"}) + "\n")
    assert main(["--home", str(runtime.settings.home), "ingest", str(logs)]) == EXIT_OK

    by_route = taught(client, acme)
    assert by_route == [(QUESTION, RIGHT, wrong, RIGHT)]
    assert taught(client, globex) == by_route
    admin = {**service["admin"], "X-Logmem-Tenant": "initech"}
    assert taught(client, admin) == by_route
    for headers in (acme, globex, admin):  # the corrected fact is retrieved first for its request
        hits = client.get("/v1/memory/search", headers=headers, params={"q": QUESTION}).json()["hits"]
        assert hits[0]["response"] == RIGHT
