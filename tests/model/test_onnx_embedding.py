"""The ONNX embedder against the torch reference: same vectors, same neighbours, same name; its export cache."""

from __future__ import annotations

import importlib.resources
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from logmem.memory.embedding import Embedder
from logmem.memory.errors import ConfigError
from logmem.model import embedding as embedding_module
from logmem.model import onnx_embedding
from logmem.model.embedding import (
    DEFAULT_EMBEDDER_NAME,
    DEFAULT_RUNTIME,
    SentenceTransformerEmbedder,
    bundled_embedder_path,
    default_embedder,
    embedder_cache_dir,
)
from logmem.model.onnx_embedding import OnnxEmbedder, UnsupportedEmbedderError, onnx_cache_key

TINY_CONFIGS: dict[str, dict[str, int]] = {
    "bert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
    "roberta": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                "max_position_embeddings": 514, "type_vocab_size": 1},
    "mpnet": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "max_position_embeddings": 514},
}


def real_texts() -> list[str]:
    """~200 distinct real-looking texts: a hand-written varied list plus the bundled sample logs' messages."""
    texts = (Path(__file__).parent / "data" / "embedding_texts.txt").read_text().splitlines()
    sample = importlib.resources.files("logmem.api") / "data" / "sample_logs.jsonl"
    for line in sample.read_text().splitlines():
        texts += [m["content"] for m in json.loads(line)["messages"]]
    return list(dict.fromkeys(t for t in texts if t.strip()))


def top_k(xb: np.ndarray, k: int = 10) -> np.ndarray:
    """Ids of each row's k nearest other rows by inner product: (n, k) int."""
    D = xb @ xb.T
    np.fill_diagonal(D, -np.inf)
    return np.argsort(-D, axis=1, kind="stable")[:, :k]


def overlap_at_k(I_a: np.ndarray, I_b: np.ndarray) -> float:
    """Mean fraction of shared ids between matching rows of two (n, k) id matrices."""
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(I_a, I_b)]))


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: a tiny random sentence-transformers folder (model type -> Transformer, mean Pooling, Normalize),
    saved by sentence-transformers itself (its current folder format), with MiniLM's tokenizer."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    made: dict[str, Path] = {}

    def make(model_type: str) -> Path:
        if model_type not in made:
            root = tmp_path_factory.mktemp(f"tiny-{model_type}")
            torch.manual_seed(0)
            config = AutoConfig.for_model(model_type, vocab_size=30522, pad_token_id=0, **TINY_CONFIGS[model_type])
            AutoModel.from_config(config).save_pretrained(root / "hf")
            tokenizer = AutoTokenizer.from_pretrained(str(bundled_embedder_path()), local_files_only=True)
            tokenizer.save_pretrained(root / "hf")
            transformer = Transformer(str(root / "hf"))
            modules = [transformer, Pooling(transformer.get_embedding_dimension(), "mean"), Normalize()]
            SentenceTransformer(modules=modules, device="cpu").save(str(root / f"tiny-{model_type}"))
            made[model_type] = root / f"tiny-{model_type}"
        return made[model_type]

    return make


@pytest.fixture
def export_count(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Records the target of every ONNX export made while the test runs."""
    calls: list[Path] = []
    real = onnx_embedding.export_onnx

    def counting(transformer: Path, target: Path) -> None:
        calls.append(target)
        real(transformer, target)

    monkeypatch.setattr(onnx_embedding, "export_onnx", counting)
    yield calls


# --- construction, names, errors -----------------------------------------------------------------------

def test_name_and_dim_match_torch_without_loading(tmp_path: Path) -> None:
    e = OnnxEmbedder(cache_dir=tmp_path)
    assert isinstance(e, Embedder)
    assert (e.name, e.dim) == (DEFAULT_EMBEDDER_NAME, 384)
    assert (e.name, e.dim) == (SentenceTransformerEmbedder().name, SentenceTransformerEmbedder().dim)
    assert e._loaded is None and not any(tmp_path.iterdir())  # construction exports nothing


def test_name_defaults_to_folder_basename_as_torch(tmp_path: Path) -> None:
    link = tmp_path / "my-minilm"
    link.symlink_to(bundled_embedder_path(), target_is_directory=True)
    assert OnnxEmbedder(link, cache_dir=tmp_path).name == SentenceTransformerEmbedder(link).name == "my-minilm"
    assert OnnxEmbedder(link, cache_dir=tmp_path, name="x").name == "x"


@pytest.mark.parametrize("kw", [{"threads": 0}, {"batch_size": 0}, {"batch_tokens": 0}, {"max_seq_length": 0},
                                {"query_cache": -1}])
def test_bad_options_raise(tmp_path: Path, kw: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match=str(next(iter(kw)))):
        OnnxEmbedder(cache_dir=tmp_path, **kw)


def _folder_with(tmp_path: Path, *, modules: list[str], pooling: dict[str, object], model_type: str) -> Path:
    folder = tmp_path / "odd-model"
    (folder / "1_Pooling").mkdir(parents=True)
    paths = {"Transformer": "", "Pooling": "1_Pooling", "Dense": "2_Dense", "Normalize": "3_Normalize"}
    (folder / "modules.json").write_text(json.dumps(
        [{"idx": i, "name": str(i), "path": paths[m], "type": f"sentence_transformers.models.{m}"}
         for i, m in enumerate(modules)]))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


@pytest.mark.parametrize(("modules", "pooling", "model_type", "named"), [
    (["Transformer", "Pooling", "Dense", "Normalize"], {"pooling_mode_mean_tokens": True}, "bert",
     "Transformer -> Pooling -> Dense -> Normalize"),
    (["Transformer", "Pooling"], {"word_embedding_dimension": 8, "pooling_mode_cls_token": True}, "bert", "cls"),
    (["Transformer", "Pooling"], {"embedding_dimension": 8, "pooling_mode": "lasttoken"}, "bert", "lasttoken"),
    (["Transformer", "Pooling"], {"embedding_dimension": 8, "pooling_mode": "mean"}, "qwen2", "'qwen2'"),
])
def test_unsupported_folder_raises_naming_what_it_found(tmp_path: Path, modules: list[str],
                                                        pooling: dict[str, object], model_type: str,
                                                        named: str) -> None:
    folder = _folder_with(tmp_path, modules=modules, pooling=pooling, model_type=model_type)
    with pytest.raises(UnsupportedEmbedderError, match=named) as info:
        OnnxEmbedder(folder, cache_dir=tmp_path)
    assert isinstance(info.value, ValueError) and "runtime='torch'" in str(info.value)


# --- default_embedder ----------------------------------------------------------------------------------

def test_default_embedder_runtimes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(default_embedder(runtime="torch"), SentenceTransformerEmbedder)
    onnx = default_embedder(runtime="onnx", home=tmp_path, threads=2)
    assert isinstance(onnx, OnnxEmbedder) and onnx.cache_dir == tmp_path / "embedders" and onnx.threads == 2
    assert isinstance(default_embedder(runtime="auto", home=tmp_path), OnnxEmbedder)
    assert isinstance(default_embedder(runtime="auto", device="meta"), SentenceTransformerEmbedder)
    monkeypatch.setattr(embedding_module, "_onnxruntime_imports", lambda: False)
    assert isinstance(default_embedder(runtime="auto", home=tmp_path), SentenceTransformerEmbedder)
    with pytest.raises(ConfigError, match="'tensorflow'"):
        default_embedder(runtime="tensorflow")  # type: ignore[arg-type]


def test_default_embedder_without_arguments_keeps_working() -> None:
    e = default_embedder()
    assert e.name == DEFAULT_EMBEDDER_NAME and e.dim == 384
    assert isinstance(e, {"torch": SentenceTransformerEmbedder}.get(DEFAULT_RUNTIME, OnnxEmbedder))


def test_cache_dir_follows_home_then_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert embedder_cache_dir(tmp_path) == tmp_path / "embedders"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedder_cache_dir() == tmp_path / "xdg" / "logmem" / "embedders"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert embedder_cache_dir() == Path.home() / ".cache" / "logmem" / "embedders"


# --- other architectures: tiny random models, checked against sentence-transformers under torch ------------

@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_tiny_models_match_torch(tiny_folder: Callable[[str], Path], tmp_path: Path, model_type: str) -> None:
    folder = tiny_folder(model_type)
    texts = ["hello world", "a much longer sentence about cats, dogs and the rain in Spain", "ok", ""]
    got = OnnxEmbedder(folder, cache_dir=tmp_path).encode(texts)
    want = SentenceTransformerEmbedder(folder).encode(texts)
    assert got.shape == want.shape == (4, 32)
    np.testing.assert_allclose(got, want, atol=2e-5)


# --- the query cache -------------------------------------------------------------------------------------

def test_a_repeated_request_is_not_embedded_again(tiny_folder: Callable[[str], Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cached = OnnxEmbedder(tiny_folder("bert"), cache_dir=tmp_path, query_cache=2)
    plain = OnnxEmbedder(tiny_folder("bert"), cache_dir=tmp_path, query_cache=0)
    embedded: list[str] = []
    real = cached._encode_batch
    monkeypatch.setattr(cached, "_encode_batch", lambda texts: embedded.extend(texts) or real(texts))
    for texts in (["how do I reset my password"], ["", "how do I reset my password", "what is a cat"],
                  ["how do I reset my password"]):
        np.testing.assert_allclose(cached.encode(texts), plain.encode(texts), atol=1e-6)  # same vectors
    assert embedded == ["how do I reset my password", "what is a cat"]  # each embedded once
    cached.encode(["a third text"])  # the cache holds 2: the least recent ("what is a cat") goes
    cached.encode(["what is a cat", "how do I reset my password"])
    assert embedded[2:] == ["a third text", "what is a cat"]
    batch = [f"ingested text {i}" for i in range(cached.QUERY_CALL + 1)]  # a batch is not a request
    np.testing.assert_allclose(cached.encode(batch), plain.encode(batch), atol=1e-6)
    assert not set(batch) & set(cached._recent)


# --- the export cache ------------------------------------------------------------------------------------

def test_cache_is_reused(tiny_folder: Callable[[str], Path], tmp_path: Path, export_count: list[Path]) -> None:
    first = OnnxEmbedder(tiny_folder("bert"), cache_dir=tmp_path)
    xb = first.encode(["reuse me"])
    assert first.onnx_path is not None and len(export_count) == 1
    mtime = first.onnx_path.stat().st_mtime_ns
    second = OnnxEmbedder(tiny_folder("bert"), cache_dir=tmp_path)
    np.testing.assert_array_equal(second.encode(["reuse me"]), xb)
    assert second.onnx_path == first.onnx_path and second.onnx_path.stat().st_mtime_ns == mtime
    assert len(export_count) == 1
    assert [p.name for p in first.onnx_path.parent.iterdir()] == ["model.onnx"]  # no temporary file left


@pytest.mark.parametrize("change", ["config", "weights"])
def test_cache_is_rebuilt_when_the_model_changes(tiny_folder: Callable[[str], Path], tmp_path: Path,
                                                 export_count: list[Path], change: str) -> None:
    folder = shutil.copytree(tiny_folder("bert"), tmp_path / "tiny-bert")
    cache = tmp_path / "cache"
    before = OnnxEmbedder(folder, cache_dir=cache)
    xb = before.encode(["a changing model"])
    if change == "config":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-3}))
    else:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        model.embeddings.word_embeddings.weight.data.mul_(2.0)
        model.save_pretrained(folder)
    after = OnnxEmbedder(folder, cache_dir=cache)
    assert not np.allclose(after.encode(["a changing model"]), xb)
    np.testing.assert_allclose(after.encode(["a changing model"]),
                               SentenceTransformerEmbedder(folder).encode(["a changing model"]), atol=2e-5)
    assert len(export_count) == 2 and after.onnx_path != before.onnx_path
    assert before.onnx_path is not None and before.onnx_path.is_file()  # the old export is left alone


def test_concurrent_first_use_exports_once(tiny_folder: Callable[[str], Path], tmp_path: Path,
                                           export_count: list[Path]) -> None:
    folder = tiny_folder("bert")
    entry = tmp_path / f"tiny-bert-{onnx_cache_key(folder)}"
    entry.mkdir()
    (entry / ".model.onnx.tmp-crashed").write_bytes(b"half an export")
    embedders = [OnnxEmbedder(folder, cache_dir=tmp_path) for _ in range(3)]
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda e=e: results.append(e.encode(["same time"]))) for e in embedders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(export_count) == 1 and len(results) == 3
    assert sorted(p.name for p in entry.iterdir()) == ["model.onnx"]  # the crashed leftover is gone
    for xb in results[1:]:
        np.testing.assert_array_equal(xb, results[0])


# --- the bundled MiniLM against torch -------------------------------------------------------------------

@pytest.fixture(scope="module")
def runtimes(tmp_path_factory: pytest.TempPathFactory) -> tuple[OnnxEmbedder, SentenceTransformerEmbedder]:
    """The bundled MiniLM under onnxruntime (exported once into a temp cache) and under torch."""
    return OnnxEmbedder(cache_dir=tmp_path_factory.mktemp("embedders")), SentenceTransformerEmbedder()


@pytest.mark.slow
def test_same_vectors_and_neighbours_as_torch(runtimes: tuple[OnnxEmbedder, SentenceTransformerEmbedder]) -> None:
    onnx, torch_ref = runtimes
    texts = real_texts()
    assert len(texts) >= 190
    got, want = onnx.encode(texts), torch_ref.encode(texts)
    assert got.dtype == np.float32 and got.shape == want.shape == (len(texts), 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * want).sum(axis=1).min() >= 0.999
    assert overlap_at_k(top_k(got), top_k(want)) == 1.0


@pytest.mark.slow
def test_long_text_truncated_as_torch(runtimes: tuple[OnnxEmbedder, SentenceTransformerEmbedder]) -> None:
    onnx, torch_ref = runtimes
    long_texts = [" ".join(f"word{i}" for i in range(2000)), "short " * 300 + "tail that gets cut"]
    np.testing.assert_allclose(onnx.encode(long_texts), torch_ref.encode(long_texts), atol=1e-5)


@pytest.mark.slow
def test_empty_order_and_duplicates(runtimes: tuple[OnnxEmbedder, SentenceTransformerEmbedder],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    onnx, _ = runtimes
    assert onnx.encode([]).shape == (0, 384) and onnx.encode([]).dtype == np.float32
    assert not onnx.encode(["", " \n\t "]).any()
    with pytest.raises(TypeError):
        onnx.encode("a single string")
    embedded: list[str] = []
    real = onnx._encode_batch

    def spy(texts: list[str]) -> np.ndarray:
        embedded.extend(texts)
        return real(texts)

    monkeypatch.setattr(onnx, "_encode_batch", spy)
    texts = ["b is a longer text than a", "", "a", "  ", "b is a longer text than a", "c"]
    xb = onnx.encode(texts)
    assert sorted(embedded) == ["a", "b is a longer text than a", "c"]  # each distinct text once
    assert not xb[1].any() and not xb[3].any()
    np.testing.assert_array_equal(xb[0], xb[4])
    for i in (0, 2, 5):
        np.testing.assert_allclose(xb[i], real([texts[i]])[0], atol=1e-5)  # in place, whatever the batch


@pytest.mark.slow
def test_batches_do_not_change_vectors(tmp_path_factory: pytest.TempPathFactory,
                                       runtimes: tuple[OnnxEmbedder, SentenceTransformerEmbedder]) -> None:
    onnx, _ = runtimes
    small = OnnxEmbedder(cache_dir=onnx.cache_dir, batch_size=3)
    texts = real_texts()[:20]
    np.testing.assert_allclose(small.encode(texts), onnx.encode(texts), atol=1e-5)


def test_passes_are_longest_first_within_both_limits(tmp_path: Path) -> None:
    embedder = OnnxEmbedder(cache_dir=tmp_path, batch_size=4, batch_tokens=100)
    lengths = [10, 60, 5, 30, 30, 200, 12, 7, 9, 11, 8]
    passes = embedder._passes(lengths)

    assert sorted(i for p in passes for i in p) == list(range(len(lengths)))  # every text once
    assert [lengths[i] for p in passes for i in p] == sorted(lengths, reverse=True)
    for p in passes:
        assert len(p) <= 4 and (len(p) == 1 or len(p) * lengths[p[0]] <= 100), p  # padded to its first
    assert [len(p) for p in passes] == [1, 1, 3, 4, 2]  # 200 alone (over the budget), 60 alone, 30s share


@pytest.mark.slow
def test_token_budget_does_not_change_vectors(runtimes: tuple[OnnxEmbedder, SentenceTransformerEmbedder]) -> None:
    onnx, _ = runtimes
    texts = [t * r for t, r in zip(real_texts()[:12], [1, 9, 2, 30, 1, 4, 1, 12, 3, 1, 6, 2])]  # 10 to 256 tokens
    one_by_one = np.vstack([onnx.encode([t]) for t in texts])
    tight = OnnxEmbedder(cache_dir=onnx.cache_dir, batch_tokens=300, query_cache=0)
    np.testing.assert_allclose(tight.encode(texts), one_by_one, atol=1e-5)


@pytest.mark.slow
def test_memory_built_with_torch_opens_with_onnx(tmp_path: Path,
                                                 runtimes: tuple[OnnxEmbedder, SentenceTransformerEmbedder]) -> None:
    from logmem.memory.memory import VectorMemory

    onnx, torch_ref = runtimes
    sample = importlib.resources.files("logmem.api") / "data" / "sample_logs.jsonl"
    query = "how to flip a python list backwards"
    with VectorMemory(tmp_path, embedder=torch_ref) as memory:
        memory.ingest_file(str(sample))
        want = [h.id for h in memory.search(query, k=3, tenant="acme")]
    with VectorMemory(tmp_path, embedder=onnx) as memory:  # same name and dim: the pinned meta accepts it
        got = [h.id for h in memory.search(query, k=3, tenant="acme")]
    assert got == want and len(want) == 3
