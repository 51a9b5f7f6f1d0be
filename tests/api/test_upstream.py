"""logmem in front of an OpenAI-compatible server (`logmem serve --upstream URL`). The upstream is a second, real
logmem server process in local mode over the tiny model; the proxy is the app on a real uvicorn server. The proxy
answers through the upstream with the memory's conditioning (the text local mode gives), streams what it does not
stream itself, logs the answer for feedback as local mode does, and a killed upstream leaves a clean error and a
consistent store."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import SKY, make_runtime, start_upstream
from logmem.api.app import create_app
from logmem.model.generator import MemoryGenerator
from servers import serving

QUESTION = "What colour is the sky on Mars at noon?"
LIKED = {"id": "u0:mars", "user": "u0", "feedback": [{"turn": 1, "kind": "like"}],
         "messages": [{"role": "user", "content": "Which colour does the Martian sky have at midday?"},
                      {"role": "assistant", "content": "Butterscotch: a pinkish tan."}]}


def proxy_runtime(home: Path, embedder: Any, lm: tuple[Any, Any], folder: Path, url: str, key: str,
                  **settings: Any) -> Any:
    """A runtime answering through the upstream at `url`, its base model named as the upstream's (`folder`)."""
    return make_runtime(home, embedder, lm, model=str(folder), upstream=url, upstream_key=key,
                        upstream_retries=1, upstream_backoff=0.05, **settings)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, embedder: Any, wordy_lm: tuple[Any, Any], tiny_folder: Path,
          upstream: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The proxy on a real server in front of the session's upstream; tenant acme remembers LIKED."""
    runtime = proxy_runtime(tmp_path_factory.mktemp("proxy") / "home", embedder, wordy_lm, tiny_folder,
                            upstream["url"], upstream["key"])
    runtime.ingest([LIKED], tenant="acme")
    keys = {t: runtime.store.create_key(tenant=t)[0] for t in ("acme", "globex")}
    with serving(create_app(runtime=runtime)) as url:
        yield {"url": url, "runtime": runtime, "keys": keys}


def http(proxy: dict[str, Any], tenant: str = "acme") -> httpx.Client:
    return httpx.Client(base_url=proxy["url"], headers={"Authorization": f"Bearer {proxy['keys'][tenant]}"},
                        timeout=120)


def local_answer(runtime: Any, lm: tuple[Any, Any], tenant: str, question: str, max_tokens: int) -> Any:
    """What local mode answers with this memory (the same model, in this process), logging nothing."""
    model, tokenizer = lm
    generator = MemoryGenerator(model, tokenizer, runtime.memory, config=runtime.conditioner().gen_config)
    return generator.chat([{"role": "user", "content": question}], tenant=tenant, max_new_tokens=max_tokens,
                          log=False)


def events(response: httpx.Response) -> list[dict[str, Any] | str]:
    """The SSE payloads of a streamed response, parsed (`[DONE]` kept as the string)."""
    out: list[dict[str, Any] | str] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_the_proxy_answers_through_the_upstream_with_memory_as_local_mode_does(
        proxy: dict[str, Any], wordy_lm: tuple[Any, Any], upstream: dict[str, Any]) -> None:
    runtime = proxy["runtime"]
    want = local_answer(runtime, wordy_lm, "acme", QUESTION, 12)
    assert want.experiences, "the memory must condition the question"
    _, conversation = runtime.conditioner().messages_for([{"role": "user", "content": QUESTION}], tenant="acme")
    # the remembered exchange, then the question followed by the remembered answer (a free-text tenant's fact note)
    assert [m["role"] for m in conversation] == ["user", "assistant", "user"]
    question = conversation[-1]["content"]
    assert question.startswith(QUESTION) and conversation[1]["content"] in question
    with http(proxy) as client:
        r = client.post("/v1/chat/completions", json={"model": "default", "max_tokens": 12,
                                                      "messages": [{"role": "user", "content": QUESTION}]})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["choices"][0]["message"]["content"] == want.text
        assert [e["id"] for e in answer["logmem"]["experiences"]] == [h.id for h in want.experiences]
        assert answer["usage"]["prompt_tokens"] == want.prompt_tokens  # the upstream saw the local prompt
        assert answer["usage"]["completion_tokens"] == want.completion_tokens
        assert answer["logmem"]["adapter"] is None and answer["model"] == "default"
        assert answer["logmem"]["mode"] == "memory"  # the upstream generates freely, the memory in its prompt

        # logged as local mode logs it: the caller's messages and the answer, the experiences used
        stored = client.get(f"/v1/interactions/{answer['id']}")
        assert stored.status_code == 200, stored.text
        assert stored.json()["messages"] == [{"role": "user", "content": QUESTION},
                                             {"role": "assistant", "content": want.text}]
        before = {h.id: runtime.experience(_acme(), h.id).utility for h in want.experiences}
        liked = client.post(f"/v1/interactions/{answer['id']}/feedback", json={"kind": "like"})
        assert liked.status_code == 200, liked.text
        assert liked.json()["credited"] == len(want.experiences)
    assert all(runtime.experience(_acme(), i).utility > u for i, u in before.items())

    # what the upstream got was the conditioned conversation: asked directly with it, it answers the same
    direct = httpx.post(f"{upstream['url']}/chat/completions", timeout=120,
                        headers={"Authorization": f"Bearer {upstream['key']}"},
                        json={"model": "default", "max_tokens": 12, "messages": conversation})
    assert direct.json()["choices"][0]["message"]["content"] == want.text


def test_a_stream_through_the_proxy_is_the_non_streamed_answer_and_is_logged(proxy: dict[str, Any]) -> None:
    body = {"model": "default", "max_tokens": 16, "messages": [{"role": "user", "content": SKY}]}
    with http(proxy, "globex") as client:
        whole = client.post("/v1/chat/completions", json=body)
        plain = whole.json()
        with client.stream("POST", "/v1/chat/completions",
                           json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            got = events(r)
            timings = [timing(whole), timing(r)]
        assert got[-1] == "[DONE]"
        chunks = [e for e in got if isinstance(e, dict)]
        assert len({c["id"] for c in chunks}) == 1 and all(c["model"] == "default" for c in chunks)
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert content == plain["choices"][0]["message"]["content"] and content
        finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
        assert "logmem" in finals[0] and finals[0]["logmem"]["interaction_id"] == chunks[0]["id"]
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
        stored = client.get(f"/v1/interactions/{chunks[0]['id']}").json()
        assert stored["messages"][-1] == {"role": "assistant", "content": content}
    # the proxy's own time before the upstream had the request, and its conditioning within it (Server-Timing)
    for found in timings:
        assert set(found) == {"condition", "forward"} and 0 < found["condition"] <= found["forward"], found
    assert timings[1]["condition"] == pytest.approx(finals[0]["logmem"]["retrieval_ms"], abs=0.01)


def connections_to(url: str) -> set[int]:
    """The local ports of this machine's TCP sockets to `url`'s port on loopback, in any state (a closed one stays in
    TIME_WAIT for a minute), from /proc/net/tcp: each is one connection opened to it."""
    port = httpx.URL(url).port
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote = line.split()[1:3]
        if int(remote.split(":")[1], 16) == port:
            ports.add(int(local.split(":")[1], 16))
    return ports


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's table of TCP sockets")
def test_streamed_answers_reuse_the_proxys_connection_to_the_upstream(proxy: dict[str, Any],
                                                                      upstream: dict[str, Any]) -> None:
    body = {"model": "default", "max_tokens": 4, "stream": True, "messages": [{"role": "user", "content": SKY}]}
    with http(proxy, "globex") as client:
        for _ in range(2):  # the proxy's connection to the upstream opened (and the client's to the proxy)
            with client.stream("POST", "/v1/chat/completions", json=body) as r:
                assert events(r)[-1] == "[DONE]"
        before = connections_to(upstream["url"])
        for i in range(5):
            with client.stream("POST", "/v1/chat/completions",
                               json={**body, "messages": [{"role": "user", "content": f"{SKY} ({i})"}]}) as r:
                assert events(r)[-1] == "[DONE]"
        opened = connections_to(upstream["url"]) - before
    # a stream closed before its body's end drops its connection: each answer would open a new one (5 here)
    assert len(opened) <= 1, f"{len(opened)} new connections to the upstream for 5 streamed answers"


def timing(response: httpx.Response) -> dict[str, float]:
    """A response's Server-Timing header as {name: ms}."""
    parts = (p.strip().split(";dur=") for p in response.headers["server-timing"].split(","))
    return {name: float(ms) for name, ms in parts}


def test_the_openai_client_works_against_the_proxy_streaming_included(proxy: dict[str, Any]) -> None:
    with openai.OpenAI(base_url=f"{proxy['url']}/v1", api_key=proxy["keys"]["acme"], max_retries=0,
                       timeout=120) as client:
        assert [m.id for m in client.models.list()] == ["default", "tiny-llama"]
        answer = client.chat.completions.create(model="default", max_tokens=8,
                                                messages=[{"role": "user", "content": QUESTION}])
        chunks = list(client.chat.completions.create(model="default", max_tokens=8, stream=True,
                                                     messages=[{"role": "user", "content": QUESTION}],
                                                     stream_options={"include_usage": True}))
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-17", max_tokens=8, messages=[{"role": "user", "content": SKY}])
    assert answer.object == "chat.completion" and answer.usage is not None and answer.usage.completion_tokens > 0
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer.choices[0].message.content
    assert [c.usage for c in chunks if c.usage] == [answer.usage]
    assert proxy["runtime"].memory.answer(chunks[0].id, tenant="acme").record["messages"][-1]["content"] == streamed


def test_killing_the_upstream_mid_stream_is_a_clean_error_and_logs_nothing(
        tmp_path: Path, embedder: Any, wordy_lm: tuple[Any, Any], tiny_folder: Path) -> None:
    server, key = start_upstream(tmp_path / "up", tiny_folder, tmp_path / "up.log")
    runtime = proxy_runtime(tmp_path / "home", embedder, wordy_lm, tiny_folder, f"{server.url}/v1", key,
                            max_tokens=4000)
    runtime.ingest([LIKED], tenant="acme")
    acme = runtime.store.create_key(tenant="acme")[0]
    uses = {e.id: e.uses for e in runtime.experiences(_acme(), limit=10)[1]}
    try:
        with serving(create_app(runtime=runtime)) as url, \
                openai.OpenAI(base_url=f"{url}/v1", api_key=acme, max_retries=0, timeout=60) as client:
            stream = client.chat.completions.create(model="default", max_tokens=4000, stream=True,
                                                    messages=[{"role": "user", "content": QUESTION}])
            seen = ""
            with pytest.raises(openai.APIError, match="upstream") as caught:
                for chunk in stream:
                    if chunk.choices:
                        seen += chunk.choices[0].delta.content or ""
                    if len(seen) > 20 and server.process is not None and server.process.poll() is None:
                        server.process.kill()  # SIGKILL: no goodbye, the connection just breaks
            assert seen, "the answer had begun streaming"
            interaction = chunk.id
            # after a failure nothing is half-written: no answer row, no use counted
            assert runtime.answers_page(_acme())[0] == 0
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {acme}"}) as h:
                assert h.get(f"/v1/interactions/{interaction}").status_code == 404
            assert {e.id: e.uses for e in runtime.experiences(_acme(), limit=10)[1]} == uses

            # the upstream is gone: a new request fails at once, 502, in OpenAI's shape
            t0 = time.monotonic()
            with pytest.raises(openai.APIStatusError) as refused:
                client.chat.completions.create(model="default", max_tokens=8,
                                               messages=[{"role": "user", "content": QUESTION}])
            assert refused.value.status_code == 502 and time.monotonic() - t0 < 10
            assert refused.value.code in ("upstream_unreachable", "upstream_status")
        assert caught.value is not None
    finally:
        server.stop()


def _acme() -> Any:
    from logmem.api.runtime import Caller

    return Caller("acme", None, admin=True)


@pytest.mark.slow
def test_the_proxy_in_front_of_the_real_bundled_model_answers_as_local_mode(
        tmp_path: Path, embedder: Any, smollm: tuple[Any, Any], smollm_folder: Path) -> None:
    server, key = start_upstream(tmp_path / "up", smollm_folder, tmp_path / "up.log")
    try:
        runtime = proxy_runtime(tmp_path / "home", embedder, smollm, smollm_folder, f"{server.url}/v1", key)
        runtime.ingest([LIKED], tenant="acme")
        want = local_answer(runtime, smollm, "acme", QUESTION, 16)
        assert want.experiences and want.text
        acme = runtime.store.create_key(tenant="acme")[0]
        with serving(create_app(runtime=runtime)) as url, \
                openai.OpenAI(base_url=f"{url}/v1", api_key=acme, max_retries=0, timeout=120) as client:
            answer = client.chat.completions.create(model="default", max_tokens=16,
                                                    messages=[{"role": "user", "content": QUESTION}])
            chunks = list(client.chat.completions.create(model="default", max_tokens=16, stream=True,
                                                         messages=[{"role": "user", "content": QUESTION}]))
        assert answer.choices[0].message.content == want.text
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    finally:
        server.stop()
