"""The names logmem speaks, each defined once: the API's `Literal`s, the CLI's `choices` and the configs' checks are
built from these. Pure constants and tiny helpers at the bottom of the layers (no torch, no SQLAlchemy), so that every
package may import it.

Each set of names is one `Literal` (what mypy and pydantic check) and its tuple (`typing.get_args`: what argparse and
the `__post_init__` checks test against), in the order the tuple lists them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal, get_args

from .errors import ConfigError

# Logs (memory/logs.py)
LogFormat = Literal["auto", "native", "openai", "memorybench"]  # "auto": told apart by each file's first record
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
FeedbackKind = Literal["like", "dislike", "copy", "regenerate", "rating", "correction"]
FEEDBACK_KINDS: tuple[str, ...] = get_args(FeedbackKind)
RATING_MIN, RATING_MAX = 1.0, 5.0  # the scale of a feedback value (a rating's stars)

# Index kinds (memory/index/): "auto" picks flat, then hnsw, then hnsw_sq8 as a tenant grows (MemoryConfig)
IndexKind = Literal["exact", "flat", "hnsw", "hnsw_sq8", "pgvector"]
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)
IndexChoice = Literal["auto", IndexKind]
INDEX_CHOICES: tuple[str, ...] = get_args(IndexChoice)

# Serving modes (model/modes.py): how a tenant is answered when a request names no mode
MemoryMode = Literal["memory", "vote"]  # the base model with memory: free generation, or a memory-supported answer
MEMORY_MODES: tuple[str, ...] = get_args(MemoryMode)
AdapterMode = Literal["consolidated", "memory+adapter"]  # the tenant's active adapter, without / with memory
ADAPTER_MODES: tuple[str, ...] = get_args(AdapterMode)
ServingMode = Literal[MemoryMode, AdapterMode]  # measured by consolidation jobs, or pinned by an operator
SERVING_MODES: tuple[str, ...] = get_args(ServingMode)
AUTO = "auto"  # served before any job measured: the vote where answers repeat, free generation where they do not
PREFERENCE: tuple[str, ...] = ("vote", "memory", *ADAPTER_MODES)  # on equal figures, the cheaper mode wins
# The name of a job's own held-out slice among the earlier adapters' (model/slices.py: the serving choice over them)
NEW_SLICE = "new"

# The generator's `choose` (GeneratorConfig): "default" is the tenant's serving mode; "off" free generation with
# memory; "vote" a memory-supported answer; "auto" vote where the tenant's answers repeat
Choose = Literal["default", "off", "vote", "auto"]
CHOOSE_VALUES: tuple[str, ...] = get_args(Choose)

# Consolidation (model/objectives.py, ConsolidationConfig) and what it leaves in the store
Method = Literal["sft", "kd", "sft+kd"]
METHODS: tuple[str, ...] = get_args(Method)
AdapterStatus = Literal["promoted", "rejected", "stale"]  # stale: promoted, then data it covers was forgotten
ADAPTER_STATUSES: tuple[str, ...] = get_args(AdapterStatus)
# Why a job's training stopped (model/training.py): its held-out NLL at a floor, `patience` measurements with no gain,
# the wall-time bound (`max_seconds`), every planned step run (the epochs, or `max_steps`)
StopReason = Literal["converged", "patience", "wall_time", "max_steps"]
STOP_REASONS: tuple[str, ...] = get_args(StopReason)
JobResult = Literal["succeeded", "rejected"]  # what a job's work returns: its adapter promoted or not
JobEnd = Literal[JobResult, "failed"]  # a finished job's status
JobStatus = Literal["queued", "running", JobEnd]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
JOB_ENDS: tuple[str, ...] = get_args(JobEnd)
JOB_RESULTS: tuple[str, ...] = get_args(JobResult)
# Canary adapters (memory/canary.py): the arm that answered a conversation, and what the users' outcomes decided:
# "continue" (undecided), "promote", "rollback", "no_decision" (the budget spent: the offline gate's verdict stands)
CanaryArm = Literal["current", "canary"]
CANARY_ARMS: tuple[str, ...] = get_args(CanaryArm)
CanaryVerdict = Literal["continue", "promote", "rollback", "no_decision"]
CANARY_VERDICTS: tuple[str, ...] = get_args(CanaryVerdict)
# A canary's state: live until its users' outcomes promote or roll it back or spend its budget undecided, or an
# operator (or an erasure) stops it
CanaryStatus = Literal["live", "promoted", "rolled_back", "undecided", "stopped"]
CANARY_STATUSES: tuple[str, ...] = get_args(CanaryStatus)

# Listing experiences (the memory and inspector routes, the store's page of experiences)
SortKey = Literal["utility", "uses", "support", "age", "id"]
SORT_KEYS: tuple[str, ...] = get_args(SortKey)
SortOrder = Literal["desc", "asc"]

# Model loading: "auto" is float32 on a CPU (bfloat16 is ~7x slower there without AVX-512 BF16) and bfloat16 on a
# GPU (half the memory, fast)
Dtype = Literal["auto", "float32", "bfloat16"]
DTYPES: tuple[str, ...] = get_args(Dtype)

ANSWER_TOKENS = 128  # new tokens of an answer when a request names none (Settings.max_tokens caps what one may name)
# The embedder's runtime (model/embedding.py): "auto" is onnxruntime when installed (the same vectors, faster), else
# torch; "static" per-token vectors distilled from the same folder
EmbeddingRuntime = Literal["auto", "onnx", "torch", "static"]
EMBEDDING_RUNTIMES: tuple[str, ...] = get_args(EmbeddingRuntime)

DB_FILE = "memory.db"  # the SQLite file in a home, when no database URL is given


def default_db_url(home: str | Path) -> str:
    """The database of a home given no URL: its SQLite file."""
    return f"sqlite:///{Path(home) / DB_FILE}"


def tenant_key(tenant: str) -> str:
    """The file-name-safe key of a tenant (a hash: tenant names may hold any character), in its index files' and
    adapter folders' names."""
    return hashlib.sha256(tenant.encode()).hexdigest()[:16]


def resolve_dtype(dtype: str, device: str) -> str:
    """The dtype to load a model in on `device` (a resolved torch device: "cpu", "cuda:0", ...): "auto" is bfloat16
    on a GPU, float32 elsewhere; "float32" and "bfloat16" are themselves. Raises ConfigError on another name."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"
