"""`Settings`: everything a logmem process is built from, read from `LOGMEM_*` environment variables (and the
CLI's options) when a front end starts, never at import."""

from __future__ import annotations

from pathlib import Path

from logmem.memory.vocabulary import Choose, Dtype, EmbeddingRuntime, IndexChoice, default_db_url
from logmem.model.config import GeneratorConfig  # no torch behind it
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """How to assemble a runtime and what the service allows. Every field is also `LOGMEM_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="LOGMEM_", frozen=True, extra="ignore")

    # Where things live
    home: Path = Path(".logmem")  # the SQLite file (unless `db`), index files, adapters, the converted model
    db: str | None = None  # any SQLAlchemy URL (postgresql+psycopg://... for several workers); default SQLite in home
    # the vector index: auto (flat, then hnsw past 50k, hnsw_sq8 past 500k experiences a tenant), or one kind for all;
    # shared_index with auto keeps the vectors in PostgreSQL (pgvector >= 0.8) when `db` is such a server
    index_kind: IndexChoice = "auto"
    shared_index: bool = False
    embedder: str | None = None  # a local sentence-transformers folder; default the bundled MiniLM
    embedder_runtime: EmbeddingRuntime = "auto"  # auto: onnxruntime (same vectors, faster)
    # if installed; static: per-token vectors distilled from the same folder (other vectors, ~0.2 ms a request)
    model: str | None = None  # a local model folder or .gguf; default the bundled SmolLM2-135M-Instruct
    device: str = "auto"  # torch device of the model (auto: the first GPU when there is one)
    dtype: Dtype = "auto"  # auto: bfloat16 on a GPU, float32 on the CPU (bfloat16 there is several times slower
    # without AVX-512 BF16); loading resolves it (vocabulary.resolve_dtype)

    # Answering
    # the generator's defaults (GeneratorConfig), defined there
    k: int = Field(default=GeneratorConfig.k, ge=0)  # experiences retrieved per request
    template: str = Field(default=GeneratorConfig.template)  # prompt template name or .jinja path
    vote_prior: float = Field(default=GeneratorConfig.vote_prior, ge=0)  # the memory's vote against the model (vote)
    generation_threads: int = Field(default=GeneratorConfig.threads, ge=0)  # torch threads per generation (0: auto)
    # "vote": answer with a memory-supported answer where the memory agrees; "auto": vote for a tenant whose answers
    # repeat (labels, routes, canned replies), free generation for the others; "default": each tenant's serving mode
    # (what its consolidation jobs measured best, or an operator pinned; `auto` before any)
    choose: Choose = Field(default=GeneratorConfig.choose)
    max_loaded_adapters: int = Field(default=8, ge=1)  # tenants' adapters kept loaded beside the base model

    # The service: keys and limits
    admin_key: SecretStr | None = None  # acts for any tenant it names (also `logmem keys create --admin`)
    # a live key is trusted this long without asking SQL again; a key revoked by another process (the CLI)
    # stops working within it, one revoked through this server at once (0: look every key up every request)
    key_cache_seconds: float = Field(default=2.0, ge=0)
    # a tenant's active adapter and serving mode are trusted this long once read (a change through this process is
    # seen at once, one by another process, such as the CLI or a worker, within it; 0: read them every request)
    state_cache_seconds: float = Field(default=2.0, ge=0)
    max_body_bytes: int = Field(default=1_000_000, ge=1_024)  # larger request bodies get 413
    max_archive_bytes: int = Field(default=2_000_000_000, ge=1_024)  # a tenant archive POSTed to /v1/tenant/import
    max_messages: int = Field(default=64, ge=1)  # messages per chat request
    max_k: int = Field(default=50, ge=1)  # experiences per search
    max_tokens: int = Field(default=512, ge=1)  # new tokens per answer
    # tokens of a request's messages (their text, before the memory joins them); longer requests are refused before
    # any model work (400, context_length_exceeded). None: the model's context length (its tokenizer's)
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    # SIGTERM: generations in flight get this long to end, then are cancelled, and the process exits
    shutdown_seconds: float = Field(default=10.0, gt=0)
    max_batch: int = Field(default=1_000, ge=1)  # log records per POST /v1/interactions
    max_concurrent: int = Field(default=2, ge=1)  # generations in flight per key; past it, 429 with Retry-After
    # /metrics gives per-tenant series (each tenant's name and memory size) to anyone, not only to an admin key:
    # for a scraper on a private network that holds no key; the aggregate series are open either way
    metrics_per_tenant: bool = False

    # An OpenAI-compatible upstream (vLLM, TGI, llama.cpp, a hosted API) that generates instead of the local model
    upstream: str | None = None  # its base URL with /v1 (http://host:8000/v1); None: the local model answers
    upstream_key: SecretStr | None = None  # its Bearer key (`logmem serve --upstream-key-env VAR` reads VAR)
    upstream_model: str | None = None  # the model name it serves; default: the first base model its /v1/models lists
    upstream_timeout: float = Field(default=60.0, gt=0)  # seconds to connect, and between two bytes of its answer
    upstream_retries: int = Field(default=2, ge=0)  # tries again (with backoff) only before any byte reached the caller
    upstream_backoff: float = Field(default=0.25, ge=0)  # seconds before the first retry, doubled for each next one
    upstream_concurrency: int = Field(default=16, ge=1)  # requests in flight to it; more wait up to upstream_timeout
    upstream_models_seconds: float = Field(default=5.0, ge=0)  # its model list (pushed adapters) is trusted this long
    # a vLLM-style server (base URL with /v1, runtime LoRA updating) that each activation, rollback and promoting job
    # pushes the tenant's active adapter to, as `<tenant>-<version>` (loaded there before it becomes active)
    push_to: str | None = None
    push_key: SecretStr | None = None  # its Bearer key (`logmem serve --push-key-env VAR` reads VAR)
    # the tenant that server knows this proxy as, when it is a logmem server (it keeps each adapter to the tenant it
    # was loaded for and answers no other tenant with it; vLLM has no tenants): by default each pushed tenant's name
    push_as_tenant: str | None = None

    # Jobs
    worker: bool = True  # the server also runs queued consolidation jobs (else: `logmem worker`)
    worker_poll_seconds: float = Field(default=2.0, gt=0)  # how often an idle worker looks for work
    consolidate_after: int = Field(default=0, ge=0)  # queue a consolidation after this many new experiences (0: off)
    consolidate_every_hours: float = Field(default=0.0, ge=0)  # ... or this old a last job, if new since (0: off)
    consolidate_params: dict[str, object] = Field(default_factory=dict)  # ConsolidationConfig fields of such jobs

    @property
    def db_url(self) -> str:
        return self.db or default_db_url(self.home)
