"""`Runtime`: one assembly of memory, model, tokenizer, generator and adapters, built once from `Settings`,
with the operations both front ends need. The CLI and the HTTP routes only translate arguments and output."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from logmem.memory import FeedbackResult, Hit, IngestReport, NotFoundError, Rejected, Stats, VectorMemory, parse_record
from logmem.memory.config import MemoryConfig
from logmem.memory.errors import (
    AdapterError,
    ConfigError,
    GenerationCancelled,
    JobConflictError,
    JobStateError,
    LogFormatError,
    LogmemError,
    PromptTooLongError,
    UnknownModelError,
)
from logmem.memory.outcome import judge
from logmem.memory.store import AdapterData, AnswerData, ExperienceData, JobData, KeyData, Store, inspection
from logmem.memory.text import clean_text, require_text
from logmem.model.config import GeneratorConfig
from logmem.model.loading import DEFAULT_GENERATOR

from .answering import SERVED_MODEL, Ask, Backend, LocalBackend, UpstreamBackend
from .jobs import JobRunner, check_consolidation, consolidation_job
from .settings import Settings
from .upstream import Upstream

logger = logging.getLogger(__name__)

PREFIX_CHARS_PER_TOKEN = 6  # a prompt's first 6 x limit characters hold over `limit` tokens in most text (~4 a token)
FALLBACK_CONTEXT = 8192  # the prompt-token limit where neither the settings nor the model say one
POLICY_MARK = "_policy_last_id"  # in a policy job's params: the newest experience id when it was queued
LoadModel = Callable[[], tuple[Any, Any]]  # () -> (model, tokenizer)


@dataclass
class Answer:
    """One answered request: the generator's reply and what the service reports beside it."""

    reply: Any  # logmem.model.generator.Reply
    adapter: str | None  # the adapter version that answered (None: the base model)
    model: str  # the model name the caller asked for
    completion_tokens: int
    finish_reason: str  # "stop" or "length"
    server_timing: str | None = None  # in front of an upstream: the proxy's own time (a Server-Timing value)


@dataclass
class Conditioned:
    """A request conditioned for an upstream: the caller's messages, the conversation with the memory's exchanges
    and lessons note (what the upstream gets), and what the answer's log needs."""

    interaction_id: str
    messages: list[dict[str, str]]  # the caller's
    conversation: list[dict[str, str]]  # with the memory, at the message level
    hits: list[Hit]  # the experiences that conditioned it, in prompt order
    memory_tokens: int
    condition_ms: float  # all of it: the follow-up judgment, embedding, search, selection, templating
    active: str | None  # the tenant's active adapter version (None: the base model, or not asked for)


@dataclass(frozen=True)
class Caller:
    """Who a request acts for: the tenant its key maps to (or that an admin key names)."""

    tenant: str
    key_id: int | None  # the API key's id (None: the settings' admin key)
    admin: bool = False


class Runtime:
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

    # --- assembly -----------------------------------------------------------------------------
    @cached_property
    def memory(self) -> VectorMemory:
        from logmem.model.embedding import default_embedder

        s = self.settings
        embedder = self._embedder or default_embedder(path=s.embedder, home=s.home, runtime=s.embedder_runtime)
        memory = VectorMemory(self.settings.home, embedder=embedder, db_url=self.settings.db_url,
                              config=MemoryConfig(index_kind=s.index_kind, shared_index=s.shared_index))
        memory.store.key_cache_seconds = s.key_cache_seconds
        return memory

    @property
    def store(self) -> Store:
        return self.memory.store

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

    def _model_parts(self) -> tuple[Any, Any, Any, Any]:
        """(generator, the same without memory, tokenizer, adapter pool), loaded on first use."""
        with self._model_lock:
            if self._loaded is None:
                from logmem.model.generator import MemoryGenerator
                from logmem.model.serving import AdapterPool

                model, tokenizer = self._load_model() if self._load_model else self._load_settings_model()
                config = GeneratorConfig(k=self.settings.k, template=self.settings.template,
                                         choose=self.settings.choose)
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

    # --- logs in --------------------------------------------------------------------------------
    def ingest(self, records: Iterable[Any], *, tenant: str | None = None, format: str = "auto",
               progress: bool = False, total: int | None = None) -> IngestReport:
        """Store log records (dicts in any supported format) for `tenant` (None: each record's own)."""
        return self.memory.ingest(records, format=format, tenant=tenant, progress=progress, total=total)

    def ingest_file(self, path: str | Path, *, tenant: str | None = None, format: str = "auto",
                    progress: bool = False) -> IngestReport:
        return self.memory.ingest_file(path, format=format, tenant=tenant, progress=progress)

    def ingest_records(self, caller: Caller, records: Sequence[Any], *,
                       format: str = "auto") -> tuple[IngestReport, list[dict[str, Any]]]:
        """Store records sent over the API under the caller's tenant (whatever tenant a record names). Returns the
        report and the rejected records, each with its index and the error that names the field."""
        items: list[Any] = []
        rejected: list[dict[str, Any]] = []
        for i, record in enumerate(records):
            try:
                items.append(parse_record(record, format=format, tenant=caller.tenant))
            except LogFormatError as exc:
                error = LogFormatError(exc.reason, source=f"records[{i}]", field=exc.field)
                items.append(Rejected(error, json.dumps(record, default=str)))
                rejected.append({"index": i, "error": error.describe(), "record": record})
        return self.memory.ingest(items), rejected

    # --- answering ------------------------------------------------------------------------------
    def models(self, caller: Caller) -> list[str]:
        """The model names the caller may ask for (local mode): the served one, the base, and the LoRAs loaded by name
        for the caller's tenant (never another tenant's: an adapter is its tenant's data)."""
        return [SERVED_MODEL, self.base_model, *self.loras(caller)]

    def chat(self, caller: Caller, messages: Sequence[dict[str, str]], *, model: str = SERVED_MODEL,
             user: str | None = None, max_tokens: int = 128, temperature: float | None = None,
             top_p: float | None = None, stop: Sequence[str] | None = None, use_memory: bool = True) -> Answer:
        """`answer` for callers in this process (the CLI, the demo): the same operation, its request in arguments,
        its text through the same boundary as HTTP's (`logmem.memory.text`: a command line's undecodable bytes arrive
        as lone surrogates)."""
        messages = [{**m, "content": clean_text(m["content"])} for m in messages]
        return self.answer(caller, Ask(messages, model=model, user=user, max_tokens=max_tokens,
                                       temperature=temperature, top_p=top_p, stop=list(stop or []),
                                       use_memory=use_memory))

    def answer(self, caller: Caller, ask: Ask, *, streamer: Any = None) -> Answer:
        """Answer `ask` with the local model: the caller's memory (and its active adapter when `ask.model` is the
        served one, under the default `choose` only where its serving mode uses it); the answer is logged for
        feedback. `temperature` None or 0 answers greedily. Without `use_memory` the model answers alone and nothing
        is logged (a comparison, not a served answer). Setting `ask.cancel` (or the server stopping) ends the
        generation at its next token with `GenerationCancelled`, and nothing is logged.

        Raises:
            UnknownModelError: `ask.model` is not one the caller may ask for.
        """
        from logmem.model.cancel import Cancel
        from transformers import StoppingCriteriaList

        models = self.models(caller)
        if ask.model not in models:
            raise UnknownModelError(f"the model {ask.model!r} does not exist; expected one of {', '.join(models)}")
        generator, bare, _, pool = self._model_parts()
        generator = generator if ask.use_memory else bare
        version, path, pooled, mode = self._route(caller, ask.model, generator)
        kwargs: dict[str, Any] = {"stopping_criteria": StoppingCriteriaList([Cancel([self.stopping, ask.cancel])])}
        if ask.temperature:
            kwargs.update(do_sample=True, temperature=ask.temperature,
                          top_p=ask.top_p if ask.top_p is not None else 1.0)
        if streamer is not None:
            kwargs["streamer"] = streamer
        with pool.using(pooled, path) as served:
            generator.model = served
            try:
                reply = generator.chat(list(ask.messages), tenant=caller.tenant, user=ask.user,
                                       max_new_tokens=ask.max_tokens, adapter=version, stop=ask.stop,
                                       interaction_id=ask.interaction_id, mode=mode, **kwargs)
            except GenerationCancelled:
                logger.info("a generation for tenant %r was cancelled (%s); nothing logged", caller.tenant,
                            "the server is stopping" if self.stopping.is_set() else "its client went away")
                raise
        return Answer(reply, version, ask.model, reply.completion_tokens, reply.finish_reason)

    def _route(self, caller: Caller, model: str, generator: Any) -> tuple[str | None, str | None, str | None, Any]:
        """(the adapter version that answers, its folder, its key in the adapter pool, the serving mode), resolved
        once per request: a LoRA loaded by name answers as itself; the served model answers with the tenant's active
        adapter, under the default `choose` only where the tenant's serving mode uses it; the base model bare."""
        if (caller.tenant, model) in self._loras:
            return (model, str(self._loras[caller.tenant, model]), _lora_key(caller.tenant, model),
                    generator.mode(caller.tenant, model))
        served, active = None, None
        if model == SERVED_MODEL and self.settings.choose == "default":
            served = self.serving_mode(caller)
            active = self.memory.active_adapter(caller.tenant) if served.adapter else None
        elif model == SERVED_MODEL:
            active = self.memory.active_adapter(caller.tenant)
        version, path = (active.version, active.path) if active else (None, None)
        if served is not None and generator.memory is not None and served.adapter == version:
            return version, path, version, served
        return version, path, version, generator.mode(caller.tenant, version)

    @cached_property
    def backend(self) -> Backend:
        """What generates this process's answers: the upstream when the settings name one, else the local model."""
        return UpstreamBackend(self, self.upstream) if self.upstream is not None else LocalBackend(self)

    def check_prompt(self, messages: Sequence[dict[str, str]]) -> None:
        """Refuse `messages` whose text is longer than the prompt-token limit (`max_prompt_tokens`, default the model's
        context), before any model work: a text over `limit` x the longest token's length is refused by its length
        alone, one under `limit` / 4 characters passes as it is; of those between, the first PREFIX_CHARS_PER_TOKEN x
        `limit` characters are counted first (enough to refuse most), and only what they do not decide is counted
        whole.

        Raises:
            PromptTooLongError: the messages have more tokens than the limit.
        """
        limit, longest, tokenizer = self._prompt_limit()
        texts = [m["content"] for m in messages]
        chars = sum(len(t) for t in texts)
        if 4 * chars + len(texts) <= limit:  # a token is at least one byte, a character at most four
            return
        if chars > limit * longest:
            raise PromptTooLongError(f"messages: at most {limit} tokens per request; these have at least "
                                     f"{-(-chars // longest)}")
        if chars > PREFIX_CHARS_PER_TOKEN * limit:  # most texts are over the limit within their first part already
            head = "\n".join(texts)[:PREFIX_CHARS_PER_TOKEN * limit]
            n = len(tokenizer(head, add_special_tokens=False)["input_ids"]) - 1  # the cut may split one token
            if n > limit:
                raise PromptTooLongError(f"messages: at most {limit} tokens per request; these have at least {n}")
        n = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
        if n > limit:
            raise PromptTooLongError(f"messages: at most {limit} tokens per request; these have {n}")

    def _prompt_limit(self) -> tuple[int, int, Any]:
        """(the prompt-token limit, the longest token's length in characters, the tokenizer that counts)."""
        if self._prompt_limits is None:
            if self.upstream is not None:
                tokenizer, config = self.conditioner().tokenizer, None
            else:
                generator, _, tokenizer, _ = self._model_parts()
                config = getattr(generator.model, "config", None)
            context = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
            limit = self.settings.max_prompt_tokens or (int(context) if context < 10**7 else FALLBACK_CONTEXT)
            longest = max(len(token) for token in tokenizer.get_vocab())  # a token's text is no longer than its name
            self._prompt_limits = (limit, longest, tokenizer)
        return self._prompt_limits

    def condition(self, caller: Caller, messages: Sequence[dict[str, str]], *, with_adapter: bool = True,
                  interaction_id: str | None = None) -> Conditioned:
        """Condition a request for the upstream as `chat` conditions it for the local model: the answer it
        continues is judged first (`follow_up`), then the memory's exchanges and lessons note join the messages.
        With `with_adapter`, also the tenant's active adapter version."""
        messages = [dict(m) for m in messages]
        t0 = time.perf_counter()
        self.memory.follow_up(messages, tenant=caller.tenant)
        cond, conversation = self.conditioner().messages_for(messages, tenant=caller.tenant)
        active = self.memory.active_adapter(caller.tenant) if with_adapter else None
        return Conditioned(interaction_id or uuid.uuid4().hex, messages, conversation, cond.experiences,
                           cond.memory_tokens, (time.perf_counter() - t0) * 1e3, active.version if active else None)

    def active_version(self, caller: Caller) -> str | None:
        """The adapter version that answers the caller (None: the base model): its active one, and under the default
        `choose` only where the tenant's serving mode uses it (as `chat` decides in local mode)."""
        if self.settings.choose == "default":
            return self.serving_mode(caller).adapter
        active = self.memory.active_adapter(caller.tenant)
        return active.version if active else None

    # --- LoRA adapters loaded by name (vLLM's runtime LoRA routes, so that `adapters push` has a real target) ----
    def loras(self, caller: Caller) -> dict[str, Path]:
        """The LoRA adapters loaded by name for the caller's tenant: name -> folder (the folder stays server-side)."""
        return {name: path for (tenant, name), path in self._loras.items() if tenant == caller.tenant}

    def load_lora(self, caller: Caller, name: str, path: str) -> None:
        """Load the PEFT folder `path` under `name` for the caller's tenant (an admin key names it), whose requests
        then name it in `model`; no other tenant lists it or is answered by it. A name is loaded once per tenant (load
        another name for other weights); one that is a served model name is refused, and so is the folder of an
        adapter another tenant trained."""
        folder = Path(path)
        if (caller.tenant, name) in self._loras or name in (SERVED_MODEL, self.base_model):
            raise AdapterError(f"the LoRA adapter {name!r} has already been loaded (or names a model)")
        if not (folder / "adapter_config.json").is_file():
            raise NotFoundError(f"no PEFT adapter at {path!r} (adapter_config.json missing)")
        self._check_owner(caller, folder)
        _, _, _, pool = self._model_parts()
        key = _lora_key(caller.tenant, name)
        try:
            with pool.using(key, folder):
                pass
        except Exception as exc:  # weights of another base model: peft refuses the shapes
            pool.evict(key)
            raise AdapterError(f"cannot load the LoRA adapter {name!r}: {type(exc).__name__}") from None
        self._loras[caller.tenant, name] = folder
        logger.info("loaded LoRA adapter %s of tenant %r from %s", name, caller.tenant, folder)

    def _check_owner(self, caller: Caller, folder: Path) -> None:
        """Refuse the folder of an adapter registered to another tenant (as if it were not there: NotFoundError)."""
        where = folder.resolve()
        for adapter in self.store.adapters(tenant=None):
            if adapter.tenant != caller.tenant and Path(adapter.path).resolve() == where:
                raise NotFoundError(f"no PEFT adapter of tenant {caller.tenant!r} at that path")

    def unload_lora(self, caller: Caller, name: str) -> None:
        """Unload the caller's tenant's LoRA `name` (another tenant's is as absent as one never loaded)."""
        if (caller.tenant, name) not in self._loras:
            raise NotFoundError(f"no LoRA adapter named {name!r} is loaded")
        del self._loras[caller.tenant, name]
        self._model_parts()[3].evict(_lora_key(caller.tenant, name))
        logger.info("unloaded LoRA adapter %s of tenant %r", name, caller.tenant)

    def feedback(self, caller: Caller, interaction_id: str, kind: str, *, value: float | None = None,
                 text: str | None = None, event_id: str | None = None) -> FeedbackResult:
        return self.memory.feedback(interaction_id, kind, tenant=caller.tenant, value=value, text=text,
                                    event_id=event_id)

    # --- the memory -----------------------------------------------------------------------------
    def search(self, caller: Caller, text: str, k: int = 5) -> list[Hit]:
        """The caller's best `k` experiences for `text` (cleaned as every request's text is; empty then: refused)."""
        return self.memory.search(require_text(text, field="q"), k, tenant=caller.tenant)

    def stats(self, caller: Caller | None) -> Stats:
        return self.memory.stats(caller.tenant if caller else None)

    def serving_mode(self, caller: Caller) -> Any:
        """How the caller's tenant is answered when a request names no mode, and why (`logmem.model.modes`)."""
        from logmem.model.modes import served_mode

        return served_mode(self.memory, caller.tenant)

    def pin_mode(self, caller: Caller, mode: str | None) -> Any:
        """Pin the tenant's serving mode (None: unpin, the measured mode serves again); returns the mode now served."""
        self.store.pin_serving_mode(tenant=caller.tenant, mode=mode)
        return self.serving_mode(caller)

    def feedback_counts(self, caller: Caller) -> dict[str, int]:
        return self.store.feedback_counts(tenant=caller.tenant)

    def experiences(self, caller: Caller, *, sort: str = "utility", descending: bool = True, limit: int = 50,
                    offset: int = 0) -> tuple[int, list[ExperienceData]]:
        return self.memory.experiences(tenant=caller.tenant, sort=sort, descending=descending, limit=limit,
                                       offset=offset)

    def experience(self, caller: Caller, experience_id: int) -> ExperienceData:
        return self.memory.experience(experience_id, tenant=caller.tenant)

    def forget(self, caller: Caller, *, experience_id: int | None = None, user: str | None = None,
               everything: bool = False) -> dict[str, int]:
        """Erase one experience, a user's data, or (`everything`) the whole tenant: rows, vectors and text."""
        if experience_id is not None:
            self.experience(caller, experience_id)  # another tenant's id is a 404, never a deletion
            return self.memory.forget(id=experience_id, tenant=caller.tenant)
        if user is not None:
            return self.memory.forget(user=user, tenant=caller.tenant)
        if everything:
            return self.memory.forget(tenant=caller.tenant)
        raise ValueError("forget needs an experience id, a user or everything=True")

    # --- consolidation: jobs and adapters -------------------------------------------------------
    def submit_consolidation(self, caller: Caller, params: dict[str, Any]) -> JobData:
        """Queue a consolidation job (checked first: bad params, or too few experiences to learn from, fail here
        and leave no job row, rather than fail in the worker)."""
        from logmem.model.consolidate import ConsolidationConfig

        try:
            config = ConsolidationConfig(**params)
        except TypeError as exc:
            raise ConfigError(f"consolidation params: {exc}") from None
        check_consolidation(self.memory, tenant=caller.tenant, config=config)
        return self.jobs.get(self.jobs.submit("consolidate", caller.tenant, params))

    def job(self, caller: Caller, job_id: int) -> JobData:
        job = self.jobs.get(job_id)
        if job.tenant != caller.tenant:
            raise NotFoundError(f"no job {job_id}")
        return job

    def job_list(self, caller: Caller) -> list[JobData]:
        return self.jobs.list(caller.tenant)

    def run_job(self, job_id: int, *, progress: bool = False) -> JobData:
        """Run a queued job in this process, on a fresh float32 copy of the model."""
        job = self.jobs.get(job_id)
        params = {k: v for k, v in job.params.items() if not k.startswith("_")}  # "_..." are the runner's notes
        model, tokenizer = self._load_trainer() if self._load_trainer else self._load_settings_model("float32")
        work = consolidation_job(self.memory, model, tokenizer, tenant=job.tenant, params=params,
                                 base_model=self.base_model, progress=progress)
        done = self.jobs.run(job_id, work)
        if done.status == "succeeded" and self.settings.push_to:  # promoted: active now, pushed as an activation is
            from . import push

            try:
                push.push(self.store, job.tenant, **self._push_target())
            except LogmemError as exc:  # the tenant's requests get the base model until a push succeeds
                logger.error("job %d: adapter of tenant %r not pushed to %s: %s", job_id, job.tenant,
                             self.settings.push_to, exc)
            self._pushed()
        return done

    def run_next_job(self) -> JobData | None:
        """Claim and run the oldest queued job whose tenant has none running; None when there is none."""
        self.jobs.recover()
        for job in self.store.jobs(status="queued"):
            try:
                return self.run_job(job.id)
            except (JobConflictError, JobStateError):
                continue  # its tenant is busy, or another worker took it first
        return None

    def work(self, stop: threading.Event, *, once: bool = False) -> int:
        """The job worker: queue the policy's due jobs, run queued ones one at a time, and poll every
        `worker_poll_seconds` until `stop` is set (with `once`: until nothing is left to run). Returns how many
        jobs it ran."""
        ran = 0
        while not stop.is_set():
            try:
                self.queue_due()
                if self.run_next_job() is not None:
                    ran += 1
                    continue
            except Exception:  # a failed poll must not end the worker: the next may pass
                logger.exception("the job worker's poll failed")
            if once:
                break
            stop.wait(self.settings.worker_poll_seconds)
        return ran

    def queue_due(self, now: float | None = None) -> list[int]:
        """Queue the consolidation jobs the settings' policy asks for; returns their ids.

        A tenant is due when it has no job queued or running and it learned `consolidate_after` experiences
        since its last policy job, or learned any and its last job is `consolidate_every_hours` old."""
        s, now = self.settings, time.time() if now is None else now
        if not (s.consolidate_after or s.consolidate_every_hours):
            return []
        queued = []
        for tenant in self.store.tenants():
            jobs = self.store.jobs(tenant=tenant)
            if any(j.status in ("queued", "running") for j in jobs):
                continue
            last = next((j for j in reversed(jobs) if POLICY_MARK in j.params), None)
            new, newest = self.store.experiences_after(tenant=tenant, after_id=last.params[POLICY_MARK] if last else 0)
            old = last is None or now - last.created_at >= s.consolidate_every_hours * 3600
            if (s.consolidate_after and new >= s.consolidate_after) or (s.consolidate_every_hours and new > 0 and old):
                queued.append(self.jobs.submit("consolidate", tenant, {**s.consolidate_params, POLICY_MARK: newest}))
                logger.info("queued consolidation job %d for tenant %r (%d new experiences)", queued[-1], tenant, new)
        return queued

    def adapters(self, caller: Caller) -> list[AdapterData]:
        return self.memory.adapters(caller.tenant)

    def activate(self, caller: Caller, version: str, *, force: bool = False) -> AdapterData:
        """Make `version` the caller's active adapter; with `push_to`, loaded into that server first."""
        if not self.settings.push_to:
            return self.memory.activate_adapter(version, tenant=caller.tenant, force=force)
        from . import push

        active, _ = push.activate(self.store, caller.tenant, version, **self._push_target(), force=force)
        self._pushed()
        return active

    def rollback(self, caller: Caller) -> str | None:
        """Back to the caller's adapter active before; with `push_to`, that one is pushed to that server."""
        if not self.settings.push_to:
            return self.memory.rollback_adapter(caller.tenant)
        from . import push

        try:
            return push.rollback(self.store, caller.tenant, **self._push_target())[0]
        finally:
            self._pushed()

    def _push_target(self) -> dict[str, Any]:
        s = self.settings
        return {"url": s.push_to, "key": s.push_key.get_secret_value() if s.push_key else None,
                "as_tenant": s.push_as_tenant}

    def _pushed(self) -> None:
        """The upstream's adapters changed: its model list is read again on the next request."""
        if self.upstream is not None:
            self.upstream.forget_names()

    # --- keys -----------------------------------------------------------------------------------
    def authenticate(self, key: str, *, tenant: str | None = None) -> Caller | None:
        """The caller a key acts for, or None for a missing, wrong or revoked key. An admin key acts only for
        the tenant it names (`tenant`); naming none, it acts for no tenant (returns None)."""
        admin = self.settings.admin_key
        if admin is not None and secrets.compare_digest(key.encode(), admin.get_secret_value().encode()):
            return Caller(tenant, None, True) if tenant else None
        found: KeyData | None = self.store.key_for(key)
        if found is None:
            return None
        if found.admin:
            return Caller(tenant, found.id, True) if tenant else None
        assert found.tenant is not None
        return Caller(found.tenant, found.id)

    # --- the inspector: what the memory learned, from whom, what it would put in a prompt ----------------------
    def answers_page(self, caller: Caller, *, limit: int = 50, offset: int = 0) -> tuple[int, list[AnswerData]]:
        """(total, one page) of the caller's served answers, newest first, each with its feedback so far."""
        return inspection.answers_page(self.store, tenant=caller.tenant, limit=limit, offset=offset)

    def activity(self, caller: Caller, *, days: int = 30, bins: int = 10, now: float | None = None) -> dict[str, Any]:
        """The caller's last `days` UTC days (oldest first): the day starts (epoch seconds), answers served per day,
        feedback events per day by kind; and a histogram of its experiences' utility over [0, 1] in `bins` bins."""
        now = time.time() if now is None else now
        first = (int(now // DAY) - days + 1) * DAY

        def day(t: float) -> int:
            return min(max(int((t - first) // DAY), 0), days - 1)

        answers = [0] * days
        for t in inspection.answer_times(self.store, tenant=caller.tenant, since=first):
            answers[day(t)] += 1
        feedback: dict[str, list[int]] = {}
        for t, kind in inspection.feedback_events(self.store, tenant=caller.tenant, since=first):
            feedback.setdefault(kind, [0] * days)[day(t)] += 1
        counts, edges = np.histogram(inspection.utilities(self.store, tenant=caller.tenant), bins=bins, range=(0, 1))
        return {"days": [first + i * DAY for i in range(days)], "answers": answers, "feedback": feedback,
                "utility": {"edges": edges.tolist(), "counts": counts.tolist()}}

    def find_experiences(self, caller: Caller, text: str, *, sort: str = "utility", descending: bool = True,
                         limit: int = 50, offset: int = 0) -> tuple[int, list[ExperienceData]]:
        """(total, one page) of the caller's experiences whose text holds `text` (any case), sorted."""
        total, ids = self.store.experience_page(tenant=caller.tenant, sort=sort, descending=descending, limit=limit,
                                                offset=offset, contains=text)
        rows = self.store.get_experiences(tenant=caller.tenant, ids=ids)
        return total, [rows[i] for i in ids if i in rows]

    def experience_history(self, caller: Caller, experience_id: int,
                           ) -> tuple[ExperienceData, list[dict[str, Any]], list[AdapterData]]:
        """One of the caller's experiences, the judged interactions it conditioned (newest first: each with its
        request, answer, feedback, judged outcome and, for a served answer, the experience's score parts), and the
        adapters trained on it. Another tenant's id is a NotFoundError."""
        found = self.experience(caller, experience_id)
        uses = [_use(u, experience_id) for u in inspection.judged_uses(self.store, tenant=caller.tenant,
                                                                         experience_id=experience_id)]
        return found, uses, [a for a in self.adapters(caller) if experience_id in a.covered]

    def preview(self, caller: Caller, text: str) -> tuple[list[Hit], Any, str, int]:
        """What answering `text` (one user message) would put before the model, generating nothing: every hit
        retrieval found (in MMR order), the conditioning that fits the budgets, the exact prompt and its tokens."""
        # in front of an upstream: the same conditioning over the tokenizer alone (no weights are loaded to proxy)
        generator = self.conditioner() if self.upstream is not None else self._model_parts()[0]
        hits, cond, prompt = generator.prompt_for([{"role": "user", "content": text}], tenant=caller.tenant)
        return hits, cond, prompt, len(generator.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def users(self, caller: Caller) -> list[inspection.UserData]:
        """The caller's users, most recently seen first."""
        return inspection.users(self.store, tenant=caller.tenant)


DAY = 86_400.0


def _lora_key(tenant: str, name: str) -> str:
    """The adapter pool's key of a LoRA loaded by name for `tenant`, apart from the tenants' adapter versions ("v<n>")
    and from another tenant's LoRA of the same name (JSON keeps any tenant and name apart)."""
    return "lora:" + json.dumps([tenant, name])


def _use(use: inspection.UseData, experience_id: int) -> dict[str, Any]:
    """A judged interaction that had experience `experience_id` in its prompt, as the inspector shows it: the
    judged turn (a served answer's, else the last answer of a log), its outcome as `judge` rules, the score parts."""
    messages = use.record["messages"]
    turn = int(use.served["turn"]) if use.served else max(
        (i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    outcome = next((o for o in judge(parse_record(use.record, format="native")) if o.turn == turn), None)
    parts = next((p for p in (use.served or {}).get("experiences", []) if p.get("id") == experience_id), None)
    return {"id": use.id, "user": use.user, "status": use.status, "served": use.served is not None,
            **turn_view(use.record, turn), "success": outcome.success if outcome else None,
            "explicit": bool(outcome and outcome.explicit), "at": use.at, "judged_at": use.judged_at, "parts": parts}


def turn_view(record: dict[str, Any], turn: int) -> dict[str, Any]:
    """The answer at `turn` of a native-schema record: the user request before it, its text, its feedback."""
    messages = record["messages"]
    inside = 0 <= turn < len(messages)
    return {"request": next((m["content"] for m in reversed(messages[:turn]) if m["role"] == "user"), "")
            if inside else "", "answer": messages[turn]["content"] if inside else "",
            "feedback": [f for f in record.get("feedback", []) if f.get("turn") == turn]}
