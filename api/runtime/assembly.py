"""The runtime's assembly: memory, store, model, tokenizer, generator, adapter pool and upstream, each built lazily
and once from `Settings`; and `Caller`, who a request acts for."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, Self

from logmem.memory import VectorMemory
from logmem.memory.config import MemoryConfig
from logmem.memory.errors import ConfigError, StoreError
from logmem.memory.store import Store
from logmem.model.config import GeneratorConfig
from logmem.model.loading import DEFAULT_GENERATOR

from ..jobs import JobRunner
from ..settings import Settings
from ..upstream import Upstream

LoadModel = Callable[[], tuple[Any, Any]]  # () -> (model, tokenizer)


class Assembly:
    """Everything one logmem process serves from, assembled lazily and once.

    Args:
        settings: where the memory and model live, limits, the job policy.
        embedder: an embedder to use instead of the settings' (tests pass the session's real one).
        load_model: `() -> (model, tokenizer)` to serve instead of loading the settings' model.
        load_trainer: `() -> (model, tokenizer)` a fresh float32 copy for a consolidation job (default: load the
            settings' model again: a job trains its own copy, never the one being served).
    """

    def __init__(self, settings: Settings, *, embedder: Any = None, load_model: LoadModel | None = None,
                 load_trainer: LoadModel | None = None) -> None:
        self.settings = settings
        self._embedder = embedder
        self._load_model = load_model
        self._load_trainer = load_trainer
        self._model_lock = threading.Lock()
        self._loaded: tuple[Any, Any, Any, Any] | None = None  # (generator, bare generator, tokenizer, adapter pool)
        self._conditioner: Any = None  # upstream mode: a MemoryGenerator without a model (conditioning only)
        # LoRA adapters loaded by name over HTTP (vLLM's runtime LoRA routes), each the data of the tenant an admin key
        # loaded it for: (tenant, name) -> folder. Only that tenant lists it or is answered by it.
        self._loras: dict[tuple[str, str], Path] = {}
        self.base_model = Path(settings.model).stem if settings.model else DEFAULT_GENERATOR
        self.stopping = threading.Event()  # set when the server shuts down: every generation in flight is cancelled
        self._prompt_limits: tuple[int, int, Any] | None = None  # (token limit, longest token's length, tokenizer)
        self._store: Store | None = None  # `over_store`'s: the SQL store opened alone

    @classmethod
    def over_store(cls, settings: Settings, *, create: bool = False) -> Self:
        """A runtime over the SQL store alone, no embedder or model loaded: all that keys, jobs and adapters need (the
        CLI's operator commands); its `memory` is refused. Without `create`, a home with no memory yet is a StoreError
        (a mistyped --home, not a new empty memory); with it, the home is made (a first key may come before any log)."""
        runtime = cls(settings)
        path = settings.home / "memory.db"
        if settings.db is None and create:
            settings.home.mkdir(parents=True, exist_ok=True)
        elif settings.db is None and not path.is_file():
            raise StoreError(f"no memory in {settings.home} (no {path.name}); ingest logs first, or pass --home or "
                             "--db")
        runtime._store = _tuned(Store(settings.db_url), settings)
        return runtime

    @cached_property
    def memory(self) -> VectorMemory:
        from logmem.model.embedding import default_embedder

        if self._store is not None:
            raise ConfigError("this runtime holds the SQL store alone (Runtime.over_store): it has no memory")
        s = self.settings
        embedder = self._embedder or default_embedder(path=s.embedder, home=s.home, runtime=s.embedder_runtime)
        memory = VectorMemory(self.settings.home, embedder=embedder, db_url=self.settings.db_url,
                              config=MemoryConfig(index_kind=s.index_kind, shared_index=s.shared_index))
        _tuned(memory.store, s)
        return memory

    @property
    def store(self) -> Store:
        return self._store if self._store is not None else self.memory.store

    def ping(self) -> None:
        """Raise unless the database answers."""
        self.store.ping()

    @cached_property
    def upstream(self) -> Upstream | None:
        """The OpenAI-compatible server that generates (`settings.upstream`), or None: the local model does."""
        s = self.settings
        if not s.upstream:
            return None
        return Upstream(s.upstream, key=s.upstream_key.get_secret_value() if s.upstream_key else None,
                        model=s.upstream_model, timeout=s.upstream_timeout, retries=s.upstream_retries,
                        backoff=s.upstream_backoff, concurrency=s.upstream_concurrency,
                        models_seconds=s.upstream_models_seconds)

    @cached_property
    def jobs(self) -> JobRunner:
        return JobRunner(self.store)

    def close(self) -> None:
        if "memory" in self.__dict__:
            self.memory.close()
        if self._store is not None:
            self._store.close()

    def _model_parts(self) -> tuple[Any, Any, Any, Any]:
        """(generator, the same without memory, tokenizer, adapter pool), loaded on first use."""
        with self._model_lock:
            if self._loaded is None:
                from logmem.model.generator import MemoryGenerator
                from logmem.model.serving import AdapterPool

                model, tokenizer = self._load_model() if self._load_model else self._load_settings_model()
                config = GeneratorConfig(k=self.settings.k, template=self.settings.template,
                                         choose=self.settings.choose, vote_prior=self.settings.vote_prior,
                                         threads=self.settings.generation_threads)
                generator = MemoryGenerator(model, tokenizer, self.memory, config=config)
                bare = MemoryGenerator(model, tokenizer, None, config=config)
                pool = AdapterPool(model, max_loaded=self.settings.max_loaded_adapters)
                self._loaded = (generator, bare, tokenizer, pool)
            return self._loaded

    def conditioner(self) -> Any:
        """What conditions a request for an upstream: the generator's own retrieval, budgets and template, over the
        settings' tokenizer alone (no weights are loaded to proxy)."""
        with self._model_lock:
            if self._conditioner is None:
                from logmem.model.generator import MemoryGenerator
                from logmem.model.loading import load_tokenizer

                tokenizer = self._load_model()[1] if self._load_model else load_tokenizer(
                    self.settings.model, home=Path(self.settings.home))
                config = GeneratorConfig(k=self.settings.k, template=self.settings.template)
                self._conditioner = MemoryGenerator(None, tokenizer, self.memory, config=config)
            return self._conditioner

    def load_model_copy(self, dtype: str | None = None) -> tuple[Any, Any]:
        """A fresh (model, tokenizer) of the settings' model, apart from the one being served (evaluation
        applies adapters to it; a job trains it)."""
        return self._load_settings_model(dtype)

    def _load_settings_model(self, dtype: str | None = None) -> tuple[Any, Any]:
        from logmem.model.loading import load_generator

        s = self.settings
        return load_generator(s.model, home=Path(s.home), dtype=dtype or s.dtype, device=s.device)

    @property
    def tokenizer(self) -> Any:
        return self._model_parts()[2]


def _tuned(store: Store, settings: Settings) -> Store:
    """`store` with what the settings say of it: how long keys and a tenant's serving state are trusted, and where
    this home keeps its copies of adapters other hosts trained."""
    store.key_cache_seconds = settings.key_cache_seconds
    store.state_cache_seconds = settings.state_cache_seconds
    store.adapter_home = settings.home / "adapters"
    return store
