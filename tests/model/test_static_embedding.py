"""The static embedder: per-token vectors distilled from the bundled MiniLM (its own ONNX export), a text's
vector their mean; the table computed once and cached; a memory pins it under its own name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from logmem.memory import VectorMemory
from logmem.memory.errors import StoreError
from logmem.model import static_embedding
from logmem.model.embedding import DEFAULT_EMBEDDER_NAME, default_embedder
from logmem.model.onnx_embedding import OnnxEmbedder
from logmem.model.static_embedding import StaticEmbedder


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("static-cache")


@pytest.fixture(scope="module")
def static(cache: Path) -> StaticEmbedder:
    embedder = default_embedder(runtime="static", cache_dir=cache)
    assert isinstance(embedder, StaticEmbedder)
    embedder.encode(["warm"])  # computes the token table (once for the module)
    return embedder


def test_vectors_are_unit_means_and_empty_texts_zero(static: StaticEmbedder) -> None:
    xb = static.encode(["How do I reset my router?", "", "   ", "how do i reset my ROUTER?", "boil an egg"])
    assert xb.shape == (5, 384) and xb.dtype == np.float32
    assert np.allclose(np.linalg.norm(xb[[0, 3, 4]], axis=1), 1.0, atol=1e-5)
    assert not xb[1].any() and not xb[2].any()
    assert np.allclose(xb[0], xb[3], atol=1e-6)  # MiniLM's tokenizer lowercases
    assert float(xb[0] @ xb[4]) < 0.99
    assert static.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        static.encode("one string")  # type: ignore[arg-type]


def test_a_one_token_text_is_what_the_transformer_gives_that_token(static: StaticEmbedder, cache: Path) -> None:
    """The table (computed in batches of 2,048 tokens) against MiniLM run on each text alone."""
    onnx = OnnxEmbedder(cache_dir=cache, query_cache=0)
    words = ["door", "house", "egg", "paris", "blue"]  # one token each
    assert np.allclose(static.encode(words), onnx.encode(words), atol=1e-5)


def test_a_text_is_the_mean_of_its_tokens(static: StaticEmbedder) -> None:
    both = static.encode(["door code"])[0]
    table, _ = static._load()
    door, code = table[[2341, 3642]]  # MiniLM's ids of "door" and "code"
    want = (door + code) / np.linalg.norm(door + code)
    assert np.allclose(both, want, atol=1e-5)


def test_the_table_is_cached_and_named_apart(static: StaticEmbedder, cache: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def recompute(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the cached table should have been read")

    monkeypatch.setattr(static_embedding, "token_table", recompute)
    again = StaticEmbedder(cache_dir=cache)
    assert np.array_equal(again.encode(["door code"]), static.encode(["door code"]))
    assert static.name == f"{DEFAULT_EMBEDDER_NAME}-static" != DEFAULT_EMBEDDER_NAME and static.dim == 384
    assert not list(cache.rglob(".static-tokens.npy.tmp-*"))


def test_a_memory_retrieves_with_it_and_refuses_the_other_embedder(static: StaticEmbedder, tmp_path: Path,
                                                                   embedder: Any) -> None:
    pairs = [("How do I reset my router?", "Hold the reset button for ten seconds."),
             ("How long should I boil an egg?", "Nine minutes for a hard yolk."),
             ("What is the capital of France?", "Paris.")]
    with VectorMemory(tmp_path / "home", embedder=static) as memory:
        memory.ingest([{"id": f"r{i}", "user": "u", "timestamp": 1_760_000_000 + i,
                        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                        "feedback": [{"turn": 1, "kind": "like"}]} for i, (q, a) in enumerate(pairs)])
        hits = memory.search("my router needs a reset", 1)
        assert hits and hits[0].response.startswith("Hold the reset")
        hits = memory.search("boiling eggs: how many minutes?", 1)
        assert hits and hits[0].response.startswith("Nine minutes")
    with pytest.raises(StoreError, match="static"):
        VectorMemory(tmp_path / "home", embedder=embedder)
