"""The default embedder: shapes, norms, semantics, determinism, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from logmem.memory.embedding import Embedder
from logmem.memory.errors import ConfigError
from logmem.model.embedding import (
    DEFAULT_EMBEDDER_NAME,
    EmbedderNotFoundError,
    SentenceTransformerEmbedder,
    bundled_embedder_path,
)


def test_dim_and_name_known_without_loading() -> None:
    e = SentenceTransformerEmbedder()
    assert isinstance(e, Embedder)
    assert e.dim == 384
    assert e.name == DEFAULT_EMBEDDER_NAME
    assert e._model is None  # construction and dim stay cheap


def test_name_defaults_to_folder_basename(tmp_path: Path) -> None:
    link = tmp_path / "my-minilm"
    link.symlink_to(bundled_embedder_path(), target_is_directory=True)
    assert SentenceTransformerEmbedder(link).name == "my-minilm"
    assert SentenceTransformerEmbedder(link, name="x").name == "x"


def test_bad_path_raises_naming_it(tmp_path: Path) -> None:
    with pytest.raises(EmbedderNotFoundError, match="nowhere") as info:
        SentenceTransformerEmbedder(tmp_path / "nowhere")
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("kw", [{"batch_size": 0}, {"max_seq_length": 0}])
def test_bad_options_raise(kw: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match=str(next(iter(kw)))):
        SentenceTransformerEmbedder(**kw)


@pytest.mark.slow
def test_shape_dtype_unit_norm(embedder: SentenceTransformerEmbedder) -> None:
    xb = embedder.encode(["How do I reset my password?", "The cat sat on the mat.", "ok"])
    assert xb.shape == (3, embedder.dim) and xb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(xb, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_empty_inputs(embedder: SentenceTransformerEmbedder) -> None:
    empty = embedder.encode([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32
    xb = embedder.encode(["", "hello there", "   "])
    assert not xb[0].any() and not xb[2].any()
    assert np.linalg.norm(xb[1]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(TypeError):
        embedder.encode("a single string")


@pytest.mark.slow
def test_paraphrase_is_nearer_than_unrelated(embedder: SentenceTransformerEmbedder) -> None:
    q, para, other = embedder.encode(["How can I change my account password?",
                                      "What are the steps to reset the password of my account?",
                                      "The recipe needs two cups of flour and an egg."])
    assert q @ para > q @ other + 0.3


@pytest.mark.slow
def test_deterministic_and_batch_independent(embedder: SentenceTransformerEmbedder) -> None:
    texts = [f"sentence number {i} about topic {i % 7}" for i in range(70)]  # spans two batches
    a, b = embedder.encode(texts), embedder.encode(texts)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(embedder.encode(texts[5:6])[0], a[5], atol=1e-5)
