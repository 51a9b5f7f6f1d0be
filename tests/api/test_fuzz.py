"""Hostile fuzzing of every operation, on SQLite and on a real PostgreSQL: schemathesis generates each request from
the app's OpenAPI schema, then one of its values is replaced by what a careless or hostile client sends (a lone
surrogate, a NUL, other control characters, a bidi override, a 100,000-character string, JSON nested 500 deep). No
answer may be a server error, and every refusal is a JSON error in OpenAI's shape that names a field.

CI runs EXAMPLES cases per operation and database; `make fuzz` runs more (LOGMEM_FUZZ_EXAMPLES)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from conftest import PORT, SKY, make_runtime
from databases import fresh_database
from hypothesis import strategies as st
from logmem.api.app import create_app
from logmem.api.runtime import Runtime
from logmem.api.settings import Settings
from schemathesis.config import SchemathesisConfig

EXAMPLES = int(os.environ.get("LOGMEM_FUZZ_EXAMPLES", "6"))  # cases per operation and database
MAX_TOKENS = 4
DEEP = 500


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


TEXT = ["\ud800", "a\udfffb", "\x00", "a\x00b", "\x1b[31mred\x1b[0m", "\x07\x08\x0b\x0c", "\u202eevil", "\x7f",
        "\ufffe\uffff", "x" * 100_000]
URL_TEXT = ["\x00", "a\x00b", "\x1b[31m", "\x07", "\u202e", "\x7f", "x" * 5_000]  # what a URL can carry (no surrogate)
VALUES: list[Any] = [*TEXT, nested(DEEP), {"a": nested(DEEP)}, 10**30, -1, float("1e308"), True, None, [], {}]

schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(runtime=Runtime(Settings(worker=False))),
    config=SchemathesisConfig.from_dict(
        {"seed": 1, "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none",
                                   "mode": "positive"}}))


def _slots(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths of every value inside `value` (itself included: the empty path)."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _slots(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _slots(item, (*path, i))
    return found


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copied = dict(value) if isinstance(value, dict) else list(value)
    copied[path[0]] = _replace(value[path[0]], path[1:], new)
    return copied


def _hostile(value: Any, choices: list[Any]) -> st.SearchStrategy[Any]:
    """`value` with one of its values (or itself) replaced by one of `choices`."""
    slots = _slots(value) if value is not None else [()]
    return st.tuples(st.sampled_from(slots), st.sampled_from(choices)).map(lambda c: _replace(value, c[0], c[1]))


@schema.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    return _hostile(body, VALUES)


@schema.hook
def flatmap_query(context: Any, query: Any) -> st.SearchStrategy[Any]:
    if not query:
        return st.just(query)
    return _hostile(query, URL_TEXT).filter(lambda q: isinstance(q, dict))


@schema.hook
def flatmap_path_parameters(context: Any, parameters: Any) -> st.SearchStrategy[Any]:
    if not parameters:
        return st.just(parameters)
    return _hostile(parameters, URL_TEXT).filter(lambda p: isinstance(p, dict))


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, embedder: Any,
        tiny_lm: tuple[Any, Any]) -> Iterator[dict[str, Any]]:
    """The app over the tiny model on SQLite or a fresh PostgreSQL database, with a key of tenant acme whose memory
    holds two experiences and one served answer."""
    postgres = request.param == "postgres"
    with fresh_database(request.getfixturevalue("pg_url")) if postgres else contextlib.nullcontext(None) as db:
        runtime = make_runtime(tmp_path_factory.mktemp("fuzz") / "home", embedder, tiny_lm, max_tokens=MAX_TOKENS,
                               **({"db": db} if db else {}))
        key, _ = runtime.store.create_key(tenant="acme")
        runtime.memory.ingest([{"tenant": "acme", "messages": [{"role": "user", "content": q},
                                                               {"role": "assistant", "content": a}],
                                "feedback": [{"turn": 1, "kind": "like"}]}
                               for q, a in ((SKY, "Butterscotch."), (PORT, "6379."))])
        yield {"app": create_app(runtime=runtime), "headers": {"Authorization": f"Bearer {key}"}}
        runtime.close()


@schema.parametrize()
def test_hostile_values_get_no_server_error_and_a_json_refusal_naming_a_field(case: Any, api: dict[str, Any]) -> None:
    body = case.body
    if case.operation.path == "/v1/chat/completions" and isinstance(body, dict):
        body["max_tokens"] = MAX_TOKENS if isinstance(body.get("max_tokens"), int) else body.get("max_tokens")
    response = case.call(app=api["app"], headers=dict(api["headers"]))
    where = f"{case.operation.method.upper()} {case.operation.path}"
    assert response.status_code < 500, (where, response.status_code, response.text[:500])
    if response.status_code >= 400:
        kind = response.headers.get("content-type") or [""]
        assert str(kind[0] if isinstance(kind, list) else kind).startswith("application/json"), (where, response.text)
        error = json.loads(response.text)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], (where, error)
        if response.status_code == 422:  # a refused value: the error names where it is
            assert error["param"], (where, error)
