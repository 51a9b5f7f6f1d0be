"""The official `openai` client, unchanged, against the service on a real uvicorn server (loopback, tiny model):
completions, streaming with usage, models, OpenAI's error classes, then feedback on a streamed answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from conftest import SKY, make_runtime
from logmem.api.app import create_app
from servers import serving


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, embedder: Any, wordy_lm: tuple[Any, Any],
           ) -> Iterator[dict[str, Any]]:
    """The app over the tiny model on a real server, with keys of tenants acme and globex."""
    runtime = make_runtime(tmp_path_factory.mktemp("openai") / "home", embedder, wordy_lm)
    key, _ = runtime.store.create_key(tenant="acme")
    other, _ = runtime.store.create_key(tenant="globex")  # an empty memory: answers that no feedback changed
    with serving(create_app(runtime=runtime)) as url:
        yield {"url": url, "key": key, "other": other, "runtime": runtime}


@pytest.fixture
def client(server: dict[str, Any]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server['url']}/v1", api_key=server["key"], max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture
def http(server: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server["url"], headers={"Authorization": f"Bearer {server['key']}"},
                      timeout=60) as c:
        yield c


def test_completion_is_a_chat_completion_whose_id_is_the_interaction(client: openai.OpenAI,
                                                                      http: httpx.Client) -> None:
    answer = client.chat.completions.create(model="default", messages=[{"role": "user", "content": SKY}],
                                            max_tokens=8)

    assert answer.object == "chat.completion" and answer.model == "default"
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    assert 0 < answer.usage.completion_tokens <= 8  # the generated tokens
    assert answer.choices[0].finish_reason == ("length" if answer.usage.completion_tokens == 8 else "stop")
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    stored = http.get(f"/v1/interactions/{answer.id}")
    assert stored.status_code == 200
    assert stored.json()["messages"][-1] == {"role": "assistant", "content": answer.choices[0].message.content}


def test_streamed_answer_is_the_stored_one_and_takes_feedback(client: openai.OpenAI, http: httpx.Client) -> None:
    stream = client.chat.completions.create(model="default", messages=[{"role": "user", "content": SKY}],
                                            max_tokens=8, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)

    assert len({c.id for c in chunks}) == 1
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and not chunks[-1].choices  # the usage chunk comes last, with no choices
    assert 0 < usage[0].completion_tokens <= 8 and usage[0].prompt_tokens > 0
    assert finish == ["length" if usage[0].completion_tokens == 8 else "stop"]
    stored = http.get(f"/v1/interactions/{chunks[0].id}").json()
    assert content and stored["messages"][-1] == {"role": "assistant", "content": content}

    rated = http.post(f"/v1/interactions/{chunks[0].id}/feedback", json={"kind": "rating", "value": 5})
    assert rated.status_code == 200, rated.text
    assert rated.json()["interaction_id"] == chunks[0].id and rated.json()["duplicate"] is False
    assert http.get(f"/v1/interactions/{chunks[0].id}").json()["feedback"][0]["kind"] == "rating"


def test_streamed_answer_ends_before_the_stop_string_as_the_stored_one(server: dict[str, Any]) -> None:
    with openai.OpenAI(base_url=f"{server['url']}/v1", api_key=server["other"], max_retries=0, timeout=60) as client:
        plain = client.chat.completions.create(model="default", messages=[{"role": "user", "content": SKY}],
                                               max_tokens=8).choices[0].message.content
        assert plain and " " in plain  # words: a stop string can fall inside the answer
        stop = plain[plain.index(" ") - 1:plain.index(" ") + 2]  # across the first space: it ends mid-token
        chunks = list(client.chat.completions.create(model="default", messages=[{"role": "user", "content": SKY}],
                                                     max_tokens=8, stop=[stop], stream=True))

    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == plain[:plain.index(stop)]
    stored = httpx.get(f"{server['url']}/v1/interactions/{chunks[0].id}",
                       headers={"Authorization": f"Bearer {server['other']}"}).json()
    assert stored["messages"][-1] == {"role": "assistant", "content": content}


def test_models_lists_the_served_and_the_base_model(client: openai.OpenAI, server: dict[str, Any]) -> None:
    models = list(client.models.list())

    assert [m.id for m in models] == ["default", server["runtime"].base_model]
    assert all(m.object == "model" and m.owned_by == "logmem" for m in models)


def test_unknown_model_is_openais_not_found_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="no-such-model") as caught:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": SKY}],
                                       max_tokens=8)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"


def test_bad_key_is_openais_authentication_error(server: dict[str, Any]) -> None:
    with openai.OpenAI(base_url=f"{server['url']}/v1", api_key="lm-wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.models.list()
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model="default", messages=[{"role": "user", "content": SKY}], max_tokens=8)
    assert caught.value.status_code == 401 and caught.value.type == "authentication_error"
