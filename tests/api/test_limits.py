"""Limits that protect the server: a prompt over the token limit is refused in OpenAI's shape before any model work
(local and in front of an upstream); a client that goes away stops its generation and frees its slot, streamed or
not, and nothing is logged for it; SIGTERM ends a server with a generation in flight within its bound.
(How fast each happens is measured by benchmarks/bench_limits.py, not here.)"""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import SKY, start_upstream
from fastapi.testclient import TestClient
from logmem.api.app import create_app
from servers import serving

LONG = 400  # new tokens: the tiny model takes seconds to write them in the test's process, longer than a cancel needs
LONGEST = 2000  # in a server process of its own it is faster: this many (of its 2048 positions) take ~10 s
DEADLINE = 60.0  # seconds a test waits for what should take about one; only a broken server ever reaches it


def ask_body(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "default", "messages": [{"role": "user", "content": content}], **extra}


def assert_too_long(r: httpx.Response, limit: int) -> None:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["type"], err["param"], err["code"]) == ("invalid_request_error", "messages", "context_length_exceeded")
    assert f"at most {limit} tokens" in err["message"]


def test_a_prompt_over_the_token_limit_is_refused_before_it_is_answered(runtime_for: Any, tmp_path: Path) -> None:
    runtime = runtime_for(tmp_path / "home", max_prompt_tokens=64)
    headers = {"Authorization": f"Bearer {runtime.store.create_key(tenant='acme')[0]}"}
    with TestClient(create_app(runtime=runtime)) as client:
        # 990 KB (under the body limit): refused by its length alone; 500 characters of 100 tokens: counted
        for content in ("word " * 198_000, "word " * 100):
            assert_too_long(client.post("/v1/chat/completions", headers=headers, json=ask_body(content)), 64)
            assert_too_long(client.post("/v1/chat/completions", headers=headers,
                                        json=ask_body(content, stream=True)), 64)
        assert client.post("/v1/chat/completions", headers=headers,
                           json=ask_body("word " * 10, max_tokens=2)).status_code == 200
    assert runtime.memory.stats("acme").interactions == 1  # only the short one was answered


def test_the_default_limit_is_the_models_context(runtime_for: Any, tmp_path: Path) -> None:
    runtime = runtime_for(tmp_path / "home")  # the tiny model: 2048 positions
    headers = {"Authorization": f"Bearer {runtime.store.create_key(tenant='acme')[0]}"}
    with TestClient(create_app(runtime=runtime)) as client:
        assert_too_long(client.post("/v1/chat/completions", headers=headers, json=ask_body("word " * 2100)), 2048)
        assert client.post("/v1/chat/completions", headers=headers,
                           json=ask_body("word " * 1000, max_tokens=2)).status_code == 200


def test_in_front_of_an_upstream_a_long_prompt_never_reaches_it(runtime_for: Any, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on: any forwarded request would be a 502
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    runtime = runtime_for(tmp_path / "home", upstream=dead, upstream_retries=0, max_prompt_tokens=64)
    headers = {"Authorization": f"Bearer {runtime.store.create_key(tenant='acme')[0]}"}
    with TestClient(create_app(runtime=runtime)) as client:
        assert_too_long(client.post("/v1/chat/completions", headers=headers, json=ask_body("word " * 100)), 64)
        assert client.post("/v1/chat/completions", headers=headers, json=ask_body("hi")).status_code == 502


def _raw_request(url: str, key: str, body: dict[str, Any]) -> tuple[socket.socket, bytes]:
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {key}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock, data


def _wait(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_client_that_goes_away_stops_its_generation_and_frees_its_slot(runtime_for: Any, tmp_path: Path,
                                                                        stream: bool) -> None:
    runtime = runtime_for(tmp_path / "home", max_tokens=LONG, max_concurrent=1)
    key = runtime.store.create_key(tenant="acme")[0]
    app = create_app(runtime=runtime)
    limit = app.state.generation_limit
    with serving(app) as url:
        warm = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                          json=ask_body(SKY, max_tokens=1))  # the first request loads the model
        assert warm.status_code == 200
        sock, _ = _raw_request(url, key, ask_body(SKY, max_tokens=LONG, stream=stream))
        with sock:
            _wait(lambda: limit.busy == 1, "the generation never started")
            if stream:  # the first chunk is on its way: the generation runs (the headers may come apart from it)
                seen = b""
                while b"data: " not in seen:
                    chunk = sock.recv(65536)
                    assert chunk, f"the stream closed before its first chunk: {seen!r}"
                    seen += chunk
        # the socket is closed: the client has gone
        _wait(lambda: limit.busy == 0, "the slot of the abandoned generation was never given back")
        assert runtime.memory.stats("acme").interactions == 1, "the abandoned answer ran to its end and was logged"
        again = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                           json=ask_body(SKY, max_tokens=1))
        assert again.status_code == 200  # max_concurrent=1: the slot is free again


def test_sigterm_ends_a_server_with_a_generation_in_flight_within_its_bound(tmp_path: Path, tiny_folder: Path) -> None:
    server, key = start_upstream(tmp_path / "home", tiny_folder, tmp_path / "server.log",  # a server process
                                 LOGMEM_MAX_TOKENS=str(LONGEST), LOGMEM_SHUTDOWN_SECONDS="2")
    try:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=DEADLINE) as client:
            assert client.post("/v1/chat/completions", json=ask_body(SKY, max_tokens=1)).status_code == 200
            long = ask_body(SKY, max_tokens=LONGEST, stream=True)
            with client.stream("POST", "/v1/chat/completions", json=long) as r:
                events = r.iter_lines()
                assert next(e for e in events if e.startswith("data: "))  # the generation runs
                assert server.process is not None
                server.process.send_signal(signal.SIGTERM)
                rest = [json.loads(e.removeprefix("data: ")) for e in events
                        if e.startswith("data: ") and e != "data: [DONE]"]
        # the stream ends with the cancellation, not with an answer run to its length
        assert rest and "error" in rest[-1] and "cancelled" in rest[-1]["error"]["message"], (rest[-1], len(rest))
        assert server.process.wait(timeout=DEADLINE) is not None
    finally:
        server.stop()
