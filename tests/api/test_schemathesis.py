"""Property-based tests of every operation against the app's own OpenAPI schema (schemathesis, in process):
no request a tenant can send makes a server error, and each response matches the schema it documents."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from conftest import PORT, SKY, make_runtime
from logmem.api.app import create_app
from logmem.api.runtime import Runtime
from logmem.api.settings import Settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
)
from schemathesis.config import SchemathesisConfig

MAX_TOKENS = 8  # the service's cap: every generation the fuzzer reaches is at most this long
EXAMPLES = 12  # fuzzed cases per operation (the examples and coverage phases add their own)
# No 5xx; each response in a documented media type, with its documented body and headers. Not the status-code
# check: FastAPI does not document 400 (a body that is not JSON) or 401. Not the positive/negative data checks:
# the schema cannot say the rules the handlers enforce (`max_tokens` <= the service's cap, a last user message).
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, response_headers_conformance]


# The schema is the app's own, read from an app that serves nothing (its runtime loads nothing before a request
# needs it); the cases go to the app the `api` fixture builds over the tiny model. (A schema from a fixture,
# `schemathesis.pytest.from_fixture`, fails on pytest 9: it sets `Function._nodeid`, which pytest 9 dropped.)
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(runtime=Runtime(Settings(worker=False))),
    config=SchemathesisConfig.from_dict(
        {"seed": 0, "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"}}))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, embedder: Any, tiny_lm: tuple[Any, Any]) -> Iterator[dict[str, Any]]:
    """The app over the tiny model and a key of tenant acme, whose memory holds two experiences (so that search and
    the experience pages have something to return) and two served answers (for feedback to judge)."""
    runtime = make_runtime(tmp_path_factory.mktemp("schemathesis") / "home", embedder, tiny_lm, max_tokens=MAX_TOKENS)
    key, _ = runtime.store.create_key(tenant="acme")
    runtime.memory.ingest([{"tenant": "acme", "messages": [{"role": "user", "content": q},
                                                           {"role": "assistant", "content": a}],
                            "feedback": [{"turn": 1, "kind": "like"}]}
                           for q, a in ((SKY, "Butterscotch: a pale yellow-brown."), (PORT, "6379."))])
    caller = runtime.authenticate(key)
    assert caller is not None
    answers = [runtime.chat(caller, [{"role": "user", "content": q}], max_tokens=4).reply.interaction_id
               for q in (SKY, PORT)]
    yield {"app": create_app(runtime=runtime), "headers": {"Authorization": f"Bearer {key}"},
           "models": runtime.models(caller), "answers": answers}
    runtime.close()


@schema.parametrize()
def test_no_server_error_and_responses_match_the_schema(case: Any, api: dict[str, Any]) -> None:
    if case.meta.generation.mode is GenerationMode.POSITIVE:
        if case.operation.path == "/v1/chat/completions":
            reach_the_model(case.body, api["models"])
        if isinstance((case.path_parameters or {}).get("interaction_id"), str):
            case.path_parameters["interaction_id"] = pick(case.path_parameters["interaction_id"], api["answers"])
    case.call_and_validate(app=api["app"], headers=dict(api["headers"]), checks=CHECKS)


def pick(generated: str, known: list[str]) -> str:
    """One of the `known` values, or (as often as each of them) the `generated` one: chosen by its length."""
    return [generated, *known][len(generated) % (len(known) + 1)]


def reach_the_model(body: Any, models: list[str]) -> None:
    """Most valid chat requests name a served model (a fuzzer never guesses one) and end with a user message (a rule
    the schema cannot say), so that they reach the generator; the rest keep the generated name and get 404."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return
    body["model"] = pick(body["model"], models)
    if isinstance(body.get("messages"), list) and body["messages"] and isinstance(body["messages"][-1], dict):
        body["messages"][-1]["role"] = "user"
