"""`VectorMemory`: the facade that composes the store, the per-tenant index cache, ingest (`ingest.py`), served
answers and their judgement (`answers.py`) and search (`search.py`); its methods delegate and hold no algorithm."""

from __future__ import annotations

import functools
import logging
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from .answers import Answers, FeedbackResult
from .archive import ImportReport, export_tenant, import_tenant
from .canaries import Canaries, promote
from .config import MemoryConfig
from .embedding import Embedder
from .errors import DimensionMismatchError, NotFoundError
from .indexes import TenantIndexes
from .ingest import Imported, Ingestor, IngestReport, import_experiences
from .instructions import SharedInstructions
from .logs import Interaction, Rejected
from .search import Hit, Searcher
from .stats import Stats, compute_stats
from .store import AdapterData, AnswerData, ExperienceData, ServingModeData, Store
from .vocabulary import default_db_url

__all__ = ["FeedbackResult", "Hit", "IngestReport", "VectorMemory"]

logger = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def _serialized(method: Callable[Concatenate[VectorMemory, P], R]) -> Callable[Concatenate[VectorMemory, P], R]:
    """Run the method under the memory's lock: threads of one process (a server's request handlers, its job
    worker) never change an index while another searches it, nor interleave a tenant's cache updates."""
    @functools.wraps(method)
    def run(self: VectorMemory, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._lock:
            return method(self, *args, **kwargs)

    return run


class VectorMemory:
    """A tenant-isolated memory of experiences: SQL rows (the truth) plus one vector index per tenant.

    Args:
        home: folder for the SQLite file (unless `db_url` is given) and the index files.
        embedder: turns text into unit vectors (`logmem.model.default_embedder()` for MiniLM).
        db_url: any SQLAlchemy URL; default `sqlite:///<home>/memory.db`.
        config: scoring, filtering and index settings.
    """

    def __init__(self, home: str | Path, *, embedder: Embedder, db_url: str | None = None,
                 config: MemoryConfig | None = None) -> None:
        self.home = Path(home)
        (self.home / "index").mkdir(parents=True, exist_ok=True)
        self._config = config or MemoryConfig()
        self.embedder = embedder
        self.d = embedder.dim
        self.store = Store(db_url or default_db_url(self.home))
        self.store.adapter_home = self.home / "adapters"  # its copies of adapters other hosts trained
        self.store.check_meta(embedder=embedder.name, dim=self.d)
        self.indexes = TenantIndexes(self.home / "index", d=self.d, config=self._config, source=self.store)
        self._lock = threading.RLock()
        store, indexes, cfg, lock = self.store, self.indexes, self._config, self._lock
        self.instructions = SharedInstructions(store, cfg)
        self.ingestor = Ingestor(store=store, indexes=indexes, config=cfg, embedder=embedder,
                                 instructions=self.instructions, lock=lock)
        self.canaries = Canaries(store)
        self.answers = Answers(store=store, indexes=indexes, config=cfg, ingestor=self.ingestor,
                               instructions=self.instructions, lock=lock, canaries=self.canaries)
        self.searcher = Searcher(store=store, indexes=indexes, config=cfg, embedder=embedder,
                                 instructions=self.instructions, lock=lock)

    def close(self) -> None:
        """Write the changed indexes, then close the database."""
        try:
            self.save()
        finally:
            self.store.close()

    def __enter__(self) -> VectorMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def config(self) -> MemoryConfig:
        """Scoring, filtering and index settings (replacing them reaches ingest, answers and search; the index
        cache keeps the settings it was opened with)."""
        return self._config

    @config.setter
    def config(self, config: MemoryConfig) -> None:
        self._config = config
        for part in (self.instructions, self.ingestor, self.answers, self.searcher):
            part.config = config

    # --- ingest (memory/ingest.py) ------------------------------------------------------------
    def ingest(self, records: Iterable[Interaction | dict | Rejected], *, format: str = "auto",
               tenant: str | None = None, progress: bool = False, total: int | None = None) -> IngestReport:
        """Store interactions and distil them into experiences, one transaction per batch.

        Records already stored (same tenant and id) are skipped, so ingesting twice changes nothing.
        Unreadable records are counted and reported, never stored; the valid ones are stored all the same.
        """
        return self.ingestor.ingest(records, format=format, tenant=tenant, progress=progress, total=total)

    def ingest_file(self, path: str | Path, *, format: str = "auto", tenant: str | None = None,
                    progress: bool = False, rejected_path: str | Path | None = None) -> IngestReport:
        """Ingest a JSONL file; rejected lines go to `rejected_path` (default `<path>.rejected.jsonl`)."""
        return self.ingestor.ingest_file(path, format=format, tenant=tenant, progress=progress,
                                         rejected_path=rejected_path)

    def import_experiences(self, items: Sequence[Imported], *, tenant: str = "default", batch: int = 5_000,
                           progress: bool = False, instructions: dict[str, int] | None = None) -> list[int]:
        """Experiences written as they are, in bulk (no log, no distillation, no merging; vectors as given, `d` wide):
        one transaction and one index generation per `batch`; the index follows at the next search. `instructions`:
        shared instructions (text -> requests that opened with it), counted as ingesting those requests would.
        Returns ids.

        Raises:
            DimensionMismatchError: a vector is not `d` wide.
        """
        for e in items:
            if np.shape(e.vector) != (self.d,):
                raise DimensionMismatchError(f"an imported vector has shape {np.shape(e.vector)}; "
                                             f"expected ({self.d},)")
        ids = import_experiences(self.store, items, tenant=tenant, batch=batch, progress=progress,
                                 instructions=instructions)
        self.instructions.drop(tenant)  # its shared instructions may have grown
        return ids

    # --- a tenant moved whole: export and import (memory/archive.py) ------------------------------
    @_serialized
    def export_tenant(self, path: str | Path, *, tenant: str = "default") -> dict[str, Any]:
        """Write the tenant's archive at `path`: its rows, vectors, serving mode and adapters (one zip, one snapshot).
        Returns its manifest. Raises NotFoundError for a tenant with nothing in it."""
        return export_tenant(self.store, path, tenant=tenant, embedder=self.embedder.name, dim=self.d)

    @_serialized
    def import_tenant(self, path: str | Path, *, tenant: str | None = None, reembed: bool | None = None,
                      progress: bool = False) -> ImportReport:
        """Import an archive as `tenant` (default: the one it was exported from), verified whole before anything is
        written, its rows in one transaction; rows already present are kept, so a second import changes nothing.
        `reembed`: None computes vectors only for an archive of another embedder; False refuses such an archive."""
        report = import_tenant(path, store=self.store, indexes=self.indexes, embedder=self.embedder, home=self.home,
                               tenant=tenant, reembed=reembed, progress=progress)
        self.instructions.drop(report.tenant)  # its shared instructions may have grown
        self.indexes.checkpoint()
        return report

    # --- served answers: logged when given, judged later by feedback or by the next turn (memory/answers.py) ----
    def log_answer(self, *, tenant: str, interaction_id: str, messages: Sequence[dict[str, str]], answer: str,
                   hits: Sequence[Hit], user: str | None = None, session: str | None = None,
                   adapter: str | None = None, details: dict[str, Any] | None = None) -> None:
        """Keep a served answer in SQL (an `answered` interaction) so that feedback can reach it from any
        process, any time later; count one use of each experience that conditioned it."""
        self.answers.log_answer(tenant=tenant, interaction_id=interaction_id, messages=messages, answer=answer,
                                hits=hits, user=user, session=session, adapter=adapter, details=details)

    def answer(self, interaction_id: str, *, tenant: str = "default") -> AnswerData:
        """A served answer with its feedback so far. Raises NotFoundError outside `tenant`."""
        return self.answers.answer(interaction_id, tenant=tenant)

    def feedback(self, interaction_id: str, kind: str, *, tenant: str = "default", value: float | None = None,
                 text: str | None = None, event_id: str | None = None) -> FeedbackResult:
        """Judge a served answer: credit the experiences that conditioned it and distil what it teaches.

        Each `event_id` counts once (default: made from the event's content, so a retried call is recognised).
        A correction's `text` is the right answer: it becomes an experience with the served answer as
        `rejected`, and where the answer came from an experience it conflicts with, it wins at equal support.
        """
        return self.answers.feedback(interaction_id, kind, tenant=tenant, value=value, text=text, event_id=event_id)

    def follow_up(self, messages: Sequence[dict[str, str]], *, tenant: str = "default") -> FeedbackResult | None:
        """Judge the served answer that a new request continues, as ingested logs are judged: `messages`
        quote an earlier conversation and its answer, then add a user turn that corrects, thanks or moves on.
        Only an answer nobody has rated yet is judged this way (explicit feedback outranks it). Returns what
        it did, or None when `messages` continue no such answer."""
        return self.answers.follow_up(messages, tenant=tenant)

    def went_well(self, experiences: Sequence[ExperienceData], *, tenant: str = "default") -> dict[int, list[str]]:
        """Per experience, the other requests that had it in their prompt and went well: the answer they got
        was judged a success (at any confidence) and agrees with the experience's response. In log order,
        without repeats; consolidation trains on them as more inputs for the experience's response."""
        return self.answers.went_well(experiences, tenant=tenant)

    # --- search (memory/search.py) ------------------------------------------------------------
    def search(self, text: str, k: int = 5, *, tenant: str = "default", now: float | None = None) -> list[Hit]:
        """The `k` best experiences for a request: faiss candidates, Numba scoring, MMR diversity."""
        return self.searcher.search(text, k, tenant=tenant, now=now)

    def search_vector(self, xq: np.ndarray, k: int = 5, *, tenant: str = "default",
                      now: float | None = None) -> list[Hit]:
        """`search` for an already embedded request `xq` (float32, (d,))."""
        return self.searcher.search_vector(xq, k, tenant=tenant, now=now)

    def neighbours(self, text: str, k: int = 10, *, tenant: str = "default") -> list[Hit]:
        """The `k` nearest experiences by trigger cosine alone (no utility, recency or MMR): a plain kNN."""
        return self.searcher.neighbours(text, k, tenant=tenant)

    # --- outcomes, forgetting, stats --------------------------------------------------------
    def record_outcome(self, experience_ids: Sequence[int], success: bool | float, *,
                       tenant: str = "default") -> int:
        """Credit an outcome to the experiences that conditioned an answer; returns how many were updated."""
        s = float(success)
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"success must be a bool or a probability in [0, 1], got {success!r}")
        return self.store.record_outcome(tenant=tenant, ids=experience_ids, success=s)

    @_serialized
    def forget(self, *, id: int | None = None, user: str | None = None, tenant: str | None = None) -> dict[str, int]:
        """Remove an experience, all of a user's data, or a whole tenant: rows, vectors and text.

        The affected tenants' indexes follow SQL (the removed ids come out); their files are rewritten.
        """
        if id is None and user is None and tenant is None:
            raise ValueError("forget needs id=, user= or tenant=")
        counts, changed = self.store.forget(experience_id=id, user=user, tenant=tenant,
                                            tally=self.instructions.tally)
        for t in changed:
            self.instructions.drop(t)
            self.searcher.rows.forget(t)  # no forgotten text kept in this process either
            self.indexes.get(t)
        self.save()
        return counts

    @_serialized
    def stats(self, tenant: str | None = None) -> Stats:
        tenants = [tenant] if tenant is not None else self.store.tenants()
        indexes = {t: self.indexes.get(t) for t in tenants}
        return compute_stats(self.store.counts(tenant=tenant), indexes)

    def experiences(self, *, tenant: str = "default", sort: str = "utility", descending: bool = True,
                    limit: int = 50, offset: int = 0) -> tuple[int, list[ExperienceData]]:
        """(total, one page) of the tenant's experiences, sorted by utility, uses, support, age or id."""
        total, ids = self.store.experience_page(tenant=tenant, sort=sort, descending=descending, limit=limit,
                                                offset=offset)
        rows = self.store.get_experiences(tenant=tenant, ids=ids)
        return total, [rows[i] for i in ids if i in rows]

    def experience(self, id: int, *, tenant: str = "default") -> ExperienceData:
        """One of the tenant's experiences. Raises NotFoundError for another tenant's or a missing id."""
        found = self.store.get_experiences(tenant=tenant, ids=[id])
        if id not in found:
            raise NotFoundError(f"no experience {id} in tenant {tenant!r}")
        return found[id]

    # --- adapters (versions live in the store; training is logmem.model.consolidate's) -------
    def iter_experiences(self, tenant: str = "default") -> Iterator[ExperienceData]:
        """All of the tenant's experiences, in id order (read in batches)."""
        return self.store.iter_experiences(tenant=tenant)

    def register_adapter(self, *, tenant: str, base_model: str, method: str, seed: int, promoted: bool,
                         metrics: dict[str, Any], covered: Iterable[int], path: str, parent: str | None = None,
                         holdout: Iterable[int] = ()) -> str:
        """Register a trained adapter (inactive), promoted or rejected by its gate, with its lineage: `parent` the
        adapter it was trained on from (None: the base model), `holdout` the experience ids its gate held out.
        With a database server (homes on other hosts may share it), the folder's files are kept in the database
        too, in the same transaction: every home reads them (`AdapterStore.adapter_home`). Returns its version."""
        return self.store.add_adapter(tenant=tenant, base_model=base_model, method=method, seed=seed,
                                      status="promoted" if promoted else "rejected", metrics=metrics,
                                      covered=covered, path=path, parent=parent, holdout=holdout,
                                      files=adapter_files(path) if self.store.shared else None)

    def erase_adapter_weights(self, version: str, *, tenant: str = "default") -> None:
        """Erase adapter `version`'s weights (they hold forgotten experiences): its folder and the database's copy."""
        path = self.store.drop_adapter_files(tenant=tenant, version=version)
        for folder in {Path(path), self.store.copy_folder(version)}:
            if folder is not None and folder.exists():
                shutil.rmtree(folder)
                logger.info("deleted the weights of adapter %s (%s)", version, folder)

    def mark_consolidated(self, experience_ids: Iterable[int], *, version: str, tenant: str = "default") -> int:
        """Mark the tenant's experiences as consolidated in adapter `version`; returns how many were marked."""
        return self.store.mark_consolidated(tenant=tenant, experience_ids=experience_ids, version=version)

    def adapters(self, tenant: str = "default") -> list[AdapterData]:
        """The tenant's adapters, oldest first."""
        return self.store.adapters(tenant=tenant)

    def active_adapter(self, tenant: str = "default") -> AdapterData | None:
        """The adapter the tenant's generator loads, or None for the base model."""
        return self.store.active_adapter(tenant=tenant)

    def activate_adapter(self, version: str, *, tenant: str = "default", force: bool = False) -> AdapterData:
        """Make `version` active (a rejected one never, a stale one only with `force`)."""
        return self.store.activate_adapter(tenant=tenant, version=version, force=force)

    def promote_adapter(self, version: str, *, tenant: str = "default") -> AdapterData:
        """Activate the promoted adapter `version`, mark what it was trained on consolidated in it and serve it in
        the mode its job measured best (what a job's promotion, and a canary's, do)."""
        return promote(self.store, tenant, version)

    def rollback_adapter(self, tenant: str = "default") -> str | None:
        """Back to the adapter active before (None: the base model)."""
        return self.store.rollback_adapter(tenant=tenant)

    def serving_mode(self, tenant: str = "default") -> ServingModeData | None:
        """What the tenant's jobs measured best and an operator pinned (None: neither yet)."""
        return self.store.serving_mode(tenant=tenant)

    def record_serving_mode(self, *, tenant: str, mode: str, adapter: str | None, metric: str,
                            figures: dict[str, Any], reason: str, job_version: str | None = None) -> None:
        """Keep the serving mode a job measured best, with `adapter` the active adapter it was measured with."""
        self.store.record_serving_mode(tenant=tenant, mode=mode, adapter=adapter, metric=metric, figures=figures,
                                       reason=reason, job_version=job_version)

    # --- index files (the cache in `indexes` keeps them) -------------------------------------
    @_serialized
    def save(self) -> None:
        """Write every loaded index whose contents changed since its file was written."""
        self.indexes.save()

    @_serialized
    def checkpoint(self) -> None:
        """Write the loaded indexes that are due (`MemoryConfig.checkpoint_changes` / `checkpoint_seconds`)."""
        self.indexes.checkpoint()

    def answer_repetition(self, tenant: str = "default") -> float:
        """The share of the tenant's experiences whose answer another experience also gave (1 - distinct /
        total; 0 when empty): near 1 for labels, routes or canned replies, near 0 for free text."""
        total, distinct = self.store.answer_counts(tenant=tenant)
        return 1.0 - distinct / total if total else 0.0


def adapter_files(folder: str | Path) -> dict[str, bytes]:
    """The files of an adapter's folder (name -> bytes), as the database keeps them."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
