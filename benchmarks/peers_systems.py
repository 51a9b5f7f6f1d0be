"""The systems `bench_peers.py` measures, each behind the same small surface (`ingest`, `fill`, `search`,
`embedded`, `close`), and the stopwatch over logmem's ingest stages."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import fill_memory
from tqdm import tqdm

K = 5  # hits per query
CHROMA_BATCH = 1_000
CHROMA_MAX_BATCH = 5_000  # chromadb refuses an add of more than ~5,461 rows


def first_user_turn(rec: dict[str, Any]) -> str:
    return next(m["content"] for m in rec["messages"] if m["role"] == "user")


# --- logmem's stages -----------------------------------------------------------------------------
class Stopwatch:
    """Exclusive wall time per stage of wrapped callables (a stage called inside another is not counted twice);
    `restore` puts the originals back."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[float] = []  # time taken by the children of each open call
        self._wrapped: list[tuple[Any, str, Any]] = []  # (owner, name, what its own namespace held)

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        inner = getattr(owner, name)  # AttributeError: the benchmark no longer matches the code it times
        self._wrapped.append((owner, name, vars(owner).get(name, _ABSENT)))

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(0.0)
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                took = time.perf_counter() - start
                children = self._stack.pop()
                self.seconds[stage] = self.seconds.get(stage, 0.0) + took - children
                if self._stack:
                    self._stack[-1] += took

        setattr(owner, name, timed)

    def restore(self) -> None:
        for owner, name, held in reversed(self._wrapped):
            if held is _ABSENT:
                delattr(owner, name)
            else:
                setattr(owner, name, held)
        self._wrapped.clear()


_ABSENT = object()


def timed_logmem(memory: Any) -> Stopwatch:
    """A stopwatch over the stages of `memory.ingest` (this memory, and the memory modules it calls)."""
    from logmem.memory import distill as distill_module
    from logmem.memory import indexes as cache
    from logmem.memory import ingest as ingest_module

    watch = Stopwatch()
    watch.wrap(memory.ingestor, "parse", "parse")
    watch.wrap(distill_module, "judge", "outcome")
    watch.wrap(ingest_module, "distill", "distil")
    watch.wrap(memory.embedder, "encode", "embed")
    for owner, name in ((cache.Pending, "add"), (cache.Pending, "search"), (cache.TenantIndexes, "committed"),
                        (cache.TenantIndexes, "checkpoint")):
        watch.wrap(owner, name, "index")
    return watch


# --- the systems ---------------------------------------------------------------------------------
class Logmem:
    name = "logmem"

    def __init__(self, folder: Path, embedder: Any) -> None:
        from logmem.memory import VectorMemory

        self.memory = VectorMemory(folder, embedder=embedder)

    def ingest(self, records: list[dict[str, Any]]) -> dict[str, float]:
        watch = timed_logmem(self.memory)
        try:
            start = time.perf_counter()
            report = self.memory.ingest(records, tenant="bench")
            total = time.perf_counter() - start
        finally:
            watch.restore()
        if report.experiences == 0:
            raise RuntimeError("logmem kept no experience of the records: nothing to search")
        return {**watch.seconds, "SQL and the rest": total - sum(watch.seconds.values())}

    def fill(self, triggers: list[str], responses: list[str], vectors: np.ndarray) -> None:
        fill_memory(self.memory, "bench", triggers, responses, vectors)
        self.memory.search(triggers[0], K, tenant="bench")  # the index built from SQL once, before timing

    def search(self, text: str) -> int:
        return len(self.memory.search(text, K, tenant="bench"))

    def embedded(self, text: str) -> str:
        """What logmem embeds of a query: the request without the shared instruction it opens with."""
        from logmem.memory.text import clean_text

        return self.memory.instructions.split("bench", clean_text(text))[1]

    def close(self) -> None:
        self.memory.close()


class Chroma:
    name = "chromadb"

    def __init__(self, folder: Path, embedder: Any) -> None:
        import chromadb
        from chromadb.api.types import Documents, EmbeddingFunction, Embeddings

        class Same(EmbeddingFunction[Documents]):  # the embedder every system here gets
            def __init__(self) -> None:
                pass

            def __call__(self, input: Documents) -> Embeddings:
                return list(embedder.encode(list(input)))

            @staticmethod
            def name() -> str:
                return "logmem-onnx-minilm"

        self.client = chromadb.PersistentClient(path=str(folder),
                                                settings=chromadb.Settings(anonymized_telemetry=False))
        self.collection = self.client.create_collection("bench", embedding_function=Same(),
                                                        metadata={"hnsw:space": "cosine"})

    def ingest(self, records: list[dict[str, Any]]) -> dict[str, float]:
        for start in range(0, len(records), CHROMA_BATCH):
            part = records[start:start + CHROMA_BATCH]
            self.collection.add(ids=[r["id"] for r in part], documents=[first_user_turn(r) for r in part],
                                metadatas=[{"answer": r["messages"][1]["content"][:4000], "user": r["user"]}
                                           for r in part])
        return {}

    def fill(self, triggers: list[str], responses: list[str], vectors: np.ndarray) -> None:
        for start in tqdm(range(0, len(triggers), CHROMA_MAX_BATCH), desc="fill chromadb", unit="batch"):
            stop = min(start + CHROMA_MAX_BATCH, len(triggers))
            self.collection.add(ids=[f"g{i}" for i in range(start, stop)], documents=triggers[start:stop],
                                embeddings=vectors[start:stop], metadatas=[{"answer": a[:4000], "user": "bench"}
                                                                           for a in responses[start:stop]])

    def search(self, text: str) -> int:
        return len(self.collection.query(query_texts=[text], n_results=K)["ids"][0])

    def embedded(self, text: str) -> str:
        return text

    def close(self) -> None:
        pass


class Mem0:
    name = "mem0"

    def __init__(self, folder: Path, embedder: Any) -> None:
        from mem0 import Memory

        config = {"vector_store": {"provider": "faiss", "config": {"path": str(folder / "faiss"),
                                                                   "embedding_model_dims": embedder.dim,
                                                                   "distance_strategy": "cosine"}},
                  "embedder": {"provider": "huggingface", "config": {"model": str(_minilm_folder())}},
                  "llm": {"provider": "openai", "config": {"api_key": "not-used-with-infer-false"}},
                  "history_db_path": str(folder / "history.db")}
        self.memory = Memory.from_config(config)
        self.memory.embedding_model = _Mem0Embedder(embedder)

    def ingest(self, records: list[dict[str, Any]]) -> dict[str, float]:
        for r in records:
            self.memory.add(r["messages"], user_id="bench", infer=False)
        return {}

    def search(self, text: str) -> int:
        found = self.memory.search(text, filters={"user_id": "bench"}, top_k=K)
        return len(found["results"] if isinstance(found, dict) else found)

    def embedded(self, text: str) -> str:
        return text

    def close(self) -> None:
        pass


class _Mem0Embedder:
    """mem0's embedder interface over the embedder every system here gets."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder

    def embed(self, text: str, memory_action: str | None = None) -> list[float]:
        return self.embedder.encode([text])[0].tolist()

    def embed_batch(self, texts: list[str], memory_action: str = "add") -> list[list[float]]:
        return self.embedder.encode(texts).tolist()


def _minilm_folder() -> Path:
    from logmem.model.embedding import bundled_embedder_path

    return Path(bundled_embedder_path())


SYSTEMS: dict[str, Callable[[Path, Any], Any]] = {"logmem": Logmem, "chromadb": Chroma, "mem0": Mem0}
