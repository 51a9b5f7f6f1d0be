"""How the proxy meets a failing upstream: every failure is an OpenAI-shaped error with the right status, never a hang
and never a half-logged answer; retries (with backoff) only before any byte reached the caller; a limit on requests in
flight to the upstream.

A healthy logmem upstream never sends a 503, a malformed chunk or nothing at all, so these upstreams are small real
HTTP servers on loopback (the standard library's), each told how to misbehave; the proxy reaches them over TCP with
its real client, as it would reach vLLM."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import SKY
from fastapi.testclient import TestClient
from logmem.api.app import create_app
from servers import free_port, serving

MODELS = {"object": "list", "data": [{"id": "m", "object": "model", "root": "m"}]}
COMPLETION = {"id": "up-1", "object": "chat.completion", "created": 0, "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Butterscotch."},
                           "finish_reason": "stop"}], "usage": {"prompt_tokens": 9, "completion_tokens": 3,
                                                                "total_tokens": 12}}
CHUNK = {"id": "up-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Butter"}, "finish_reason": None}]}


class Misbehaving:
    """An HTTP server on loopback answering GET /v1/models, and each POST /v1/chat/completions with the next of
    `plan` (the last one repeats): an int (that status, with an OpenAI error body), "ok" (a completion), "hang"
    (nothing, until the server stops), "garbage" or "cut" (a stream: one chunk, then a malformed one, or the end of
    the connection without [DONE])."""

    def __init__(self, plan: list[int | str]) -> None:
        self.plan, self.posts = plan, 0
        self.arrivals: list[float] = []  # time.monotonic() of each POST
        self.stop = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
                self._json(200, MODELS)

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                with owner._lock:
                    step = owner.plan[min(owner.posts, len(owner.plan) - 1)]
                    owner.posts += 1
                    owner.arrivals.append(time.monotonic())
                self._act(step)

            def _act(self, step: int | str) -> None:
                if isinstance(step, int):
                    self._json(step, {"error": {"message": f"told to answer {step}", "type": "x"}},
                               {"Retry-After": "0"} if step == 429 else {})
                elif step == "ok":
                    self._json(200, COMPLETION)
                elif step == "hang":
                    owner.stop.wait(10)
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    self.wfile.write(f"data: {json.dumps(CHUNK)}\n\n".encode())
                    if step == "garbage":
                        self.wfile.write(b"data: {\"choices\": [\n\n")
                    self.wfile.flush()
                    self.close_connection = True

            def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


Proxy = tuple[TestClient, Any, dict[str, str], Misbehaving | None]


@pytest.fixture
def proxy_to(tmp_path: Path, runtime_for: Callable[..., Any]) -> Iterator[Callable[..., Proxy]]:
    """`proxy_to(plan_or_url, **settings)`: (TestClient of a proxy, its runtime, tenant acme's headers, the upstream)
    in front of a `Misbehaving` upstream following `plan` (or of the URL given: no upstream server)."""
    servers: list[Misbehaving] = []
    clients: list[TestClient] = []

    def start(target: list[int | str] | str, **settings: Any) -> Proxy:
        if isinstance(target, list):
            servers.append(Misbehaving(target))
            target = servers[-1].url
        runtime = runtime_for(tmp_path / f"home{len(clients)}", upstream=target,
                              **{"upstream_backoff": 0.01, "upstream_timeout": 2.0, **settings})
        key = runtime.store.create_key(tenant="acme")[0]
        clients.append(TestClient(create_app(runtime=runtime)).__enter__())
        server = servers[-1] if servers and servers[-1].url == target else None
        return clients[-1], runtime, {"Authorization": f"Bearer {key}"}, server

    yield start
    for client in clients:
        client.__exit__(None, None, None)
    for server in servers:
        server.close()


def ask(client: Any, headers: dict[str, str], **body: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", headers=headers,
                       json={"model": "default", "max_tokens": 8, "messages": [{"role": "user", "content": SKY}],
                             **body})


def logged(runtime: Any) -> int:
    from logmem.api.runtime import Caller

    return int(runtime.answers_page(Caller("acme", None, admin=True))[0])


def test_a_503_is_tried_again_with_backoff_and_the_answer_then_logged(proxy_to: Any) -> None:
    client, runtime, acme, upstream = proxy_to([503, 503, "ok"], upstream_retries=2)
    r = ask(client, acme)
    assert r.status_code == 200, r.text
    assert upstream is not None and upstream.posts == 3
    assert r.json()["choices"][0]["message"]["content"] == "Butterscotch." and r.json()["usage"]["total_tokens"] == 12
    assert logged(runtime) == 1


@pytest.mark.parametrize(("plan", "status", "code", "posts"), [
    ([503], 502, "upstream_status", 3),  # tried 1 + 2 times, then a bad gateway
    ([500], 502, "upstream_status", 3),
    ([401], 502, "upstream_status", 1),  # the proxy's key was refused: not the caller's fault, not worth a retry
    ([400], 400, "upstream_refused", 1),  # the caller's request: its status and the upstream's message
    ([422], 422, "upstream_refused", 1),
    ([429], 429, "upstream_rate_limited", 3),
])
def test_an_upstream_status_becomes_an_openai_error_and_logs_nothing(proxy_to: Any, plan: list[int | str],
                                                                      status: int, code: str, posts: int) -> None:
    client, runtime, acme, upstream = proxy_to(plan, upstream_retries=2)
    assert upstream is not None
    for stream in (False, True):  # a stream fails the same way before its first byte
        before = upstream.posts
        r = ask(client, acme, stream=stream)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["code"] == code and f"upstream answered {plan[0]}" in error["message"]
        assert upstream.posts - before == posts
        if status == 429:
            assert r.headers["retry-after"] == "0"
    assert logged(runtime) == 0


def test_an_upstream_that_sends_nothing_is_a_504_in_time_and_not_tried_again(proxy_to: Any) -> None:
    client, runtime, acme, upstream = proxy_to(["hang"], upstream_timeout=0.5, upstream_retries=2)
    t0 = time.monotonic()
    r = ask(client, acme)
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - t0 < 5 and upstream is not None and upstream.posts == 1
    assert logged(runtime) == 0


def test_an_unreachable_upstream_is_a_502_after_the_retries(proxy_to: Any) -> None:
    client, runtime, acme, _ = proxy_to(f"http://127.0.0.1:{free_port()}/v1", upstream_model="m",
                                        upstream_retries=2)
    r = ask(client, acme)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable", r.text
    assert r.json()["error"]["type"] == "upstream_error"
    assert logged(runtime) == 0


@pytest.mark.parametrize("broken", ["garbage", "cut"])
def test_a_stream_that_breaks_after_its_first_chunk_ends_in_an_error_event_and_is_not_tried_again(
        proxy_to: Any, broken: str) -> None:
    client, runtime, acme, upstream = proxy_to([broken, "ok"], upstream_retries=2)
    with client.stream("POST", "/v1/chat/completions", headers=acme,
                       json={"model": "default", "max_tokens": 8, "stream": True,
                             "messages": [{"role": "user", "content": SKY}]}) as r:
        assert r.status_code == 200
        payloads = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    *chunks, last = [json.loads(p) for p in payloads[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Butter"  # what came before the break
    assert {c["model"] for c in chunks} == {"default"}
    error = last["error"]
    assert error["code"] == ("upstream_malformed" if broken == "garbage" else "upstream_stream")
    assert payloads[-1] == "[DONE]"
    assert logged(runtime) == 0  # the caller saw a failure: nothing to give feedback on
    assert upstream is not None and upstream.posts == 1  # bytes had reached the caller: not tried again
    assert ask(client, acme).status_code == 200
    assert logged(runtime) == 1


def test_requests_in_flight_to_the_upstream_never_pass_its_limit(tmp_path: Path, runtime_for: Any) -> None:
    """With a limit of 1 and an upstream that never answers, each request reaches it only once the one before gave
    up (its 0.5 s timeout): arrivals are spaced by the timeout, and a request that waited that long for the slot
    is a 503 without reaching it."""
    upstream = Misbehaving(["hang"])
    try:
        runtime = runtime_for(tmp_path / "home", upstream=upstream.url, upstream_model="m", upstream_concurrency=1,
                              upstream_timeout=0.5, upstream_retries=0, max_concurrent=8)
        key = runtime.store.create_key(tenant="acme")[0]
        with serving(create_app(runtime=runtime)) as url, ThreadPoolExecutor(3) as pool:
            def one(_: int) -> int:
                return httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                  timeout=30, json={"model": "default", "max_tokens": 8,
                                                    "messages": [{"role": "user", "content": SKY}]}).status_code
            statuses = list(pool.map(one, range(3)))
        gaps = np.diff(upstream.arrivals)
        assert len(upstream.arrivals) >= 1 and (gaps >= 0.45).all(), upstream.arrivals
        assert sorted(statuses) == sorted([504] * len(upstream.arrivals) + [503] * (3 - len(upstream.arrivals)))
        assert logged(runtime) == 0
    finally:
        upstream.close()
