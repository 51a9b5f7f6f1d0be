"""The runtime's answers with the local model (the backends of `logmem.api.answering` call these): the caller's
models, the route of a request (which adapter, which serving mode), the prompt-length check, the conditioning of a
request for an upstream, and LoRA adapters loaded by name."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logmem.memory import Hit, NotFoundError
from logmem.memory.canaries import served_as
from logmem.memory.errors import AdapterError, ConfigError, GenerationCancelled, PromptTooLongError, UnknownModelError
from logmem.memory.text import clean_text
from logmem.memory.vocabulary import ADAPTER_MODES, AUTO, SERVING_MODES

from ..answering import SERVED_MODEL, Answer, Ask, Caller
from .memory_ops import MemoryOps

logger = logging.getLogger(__name__)

PREFIX_CHARS_PER_TOKEN = 6  # a prompt's first 6 x limit characters hold over `limit` tokens in most text (~4 a token)
FALLBACK_CONTEXT = 8192  # the prompt-token limit where neither the settings nor the model say one


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
    active: str | None  # the adapter version that answers the caller (None: the base model, or not asked for)
    canary: dict[str, Any] | None = None  # the live canary's arm that answers its conversation (`served_as`)


class Serving(MemoryOps):
    """Answers with the local model, the conditioning of a request for an upstream, LoRA adapters loaded by name."""

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
        return self.answer_all(caller, [ask], streamer=streamer)[0]

    def answer_all(self, caller: Caller, asks: Sequence[Ask], *, streamer: Any = None) -> list[Answer]:
        """`answer` for several asks of one model, mode and generation settings in one batched generation (`logmem
        eval`); a streamer takes one ask only."""
        ask = asks[0]
        if any(_batched(a) != _batched(ask) for a in asks) or (streamer is not None and len(asks) > 1):
            raise ValueError("asks answered together share their model, mode and generation settings (and a streamer "
                             "takes one ask)")
        models = self.models(caller)
        if ask.model not in models:
            raise UnknownModelError(f"the model {ask.model!r} does not exist; expected one of {', '.join(models)}")
        generator, bare, _, pool = self._model_parts()
        generator = generator if ask.use_memory else bare
        arms = self._arms(caller, asks)
        answers: list[Answer | None] = [None] * len(asks)
        for arm in ("current", "canary"):  # a live canary's conversations apart from the others': its own route
            todo = [i for i, found in enumerate(arms) if (found[1] if found else "current") == arm]
            if not todo:
                continue
            canary = arms[todo[0]][0] if arm == "canary" else None  # type: ignore[index]
            route = self._route(caller, ask.model, generator, ask.mode, canary)
            logged = [served_as(*arms[i]) if arms[i] is not None else None for i in todo]  # type: ignore[misc]
            for i, answer in zip(todo, self._generate(caller, [asks[i] for i in todo], generator, pool, route, logged,
                                                      streamer)):
                answers[i] = answer
        return [a for a in answers if a is not None]

    def _arms(self, caller: Caller, asks: Sequence[Ask]) -> list[tuple[Any, str, str] | None]:
        """Per ask, (the tenant's live canary, the arm that answers its conversation, the conversation's key); None
        where no canary applies: none is live, or the ask names a model or mode, or is a comparison (not logged)."""
        ask = asks[0]
        if ask.model != SERVED_MODEL or ask.mode is not None or not ask.log or not ask.use_memory:
            return [None] * len(asks)
        return [self.memory.canaries.arm(caller.tenant, a.messages, a.user) for a in asks]

    def _generate(self, caller: Caller, asks: Sequence[Ask], generator: Any, pool: Any,
                  route: tuple[str | None, str | None, str | None, Any], canary: list[dict[str, Any] | None],
                  streamer: Any) -> list[Answer]:
        """The batched generation of asks sharing one route."""
        from logmem.model.cancel import Cancel
        from transformers import StoppingCriteriaList

        ask = asks[0]
        version, path, pooled, mode = route
        kwargs: dict[str, Any] = {
            "stopping_criteria": StoppingCriteriaList([Cancel([self.stopping, *(a.cancel for a in asks)])])}
        if ask.temperature:
            kwargs.update(do_sample=True, temperature=ask.temperature,
                          top_p=ask.top_p if ask.top_p is not None else 1.0)
        if streamer is not None:
            kwargs["streamer"] = streamer
        with pool.using(pooled, path) as served:
            generator.model = served
            try:
                replies = generator.chat_many([list(a.messages) for a in asks], tenant=caller.tenant, user=ask.user,
                                              max_new_tokens=ask.max_tokens, adapter=version, stop=ask.stop,
                                              interaction_ids=[a.interaction_id for a in asks], mode=mode,
                                              log=ask.log, canary=canary, **kwargs)
            except GenerationCancelled:
                logger.info("a generation for tenant %r was cancelled (%s); nothing logged", caller.tenant,
                            "the server is stopping" if self.stopping.is_set() else "its client went away")
                raise
        return [Answer(reply, version, ask.model, reply.completion_tokens, reply.finish_reason) for reply in replies]

    def _route(self, caller: Caller, model: str, generator: Any, asked: str | None = None,
               canary: Any = None) -> tuple[str | None, str | None, str | None, Any]:
        """(the adapter version that answers, its folder, its key in the adapter pool, the serving mode), resolved
        once per request: a LoRA loaded by name answers as itself; the served model answers with the tenant's active
        adapter, under the default `choose` only where the tenant's serving mode uses it (or in the mode `asked`,
        an evaluation's; or, on a live `canary`'s arm, with the canary's adapter in its mode); the base model bare."""
        if asked is not None and model == SERVED_MODEL:
            return self._asked_route(caller, asked)
        if canary is not None:
            from logmem.model.modes import ServedMode

            found = self.memory.store.get_adapter(version=canary.version)
            mode = (ServedMode(canary.mode, canary.version, "canary", f"the canary arm of adapter {canary.version}")
                    if self.settings.choose == "default" else generator.mode(caller.tenant, canary.version))
            return canary.version, found.path, canary.version, mode
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

    def _asked_route(self, caller: Caller, asked: str) -> tuple[str | None, str | None, str | None, Any]:
        """`_route` for a serving mode asked for by name: an adapter mode with the tenant's active adapter (ConfigError:
        none), a memory mode on the base model."""
        from logmem.model.modes import ServedMode

        if asked not in (*SERVING_MODES, AUTO):
            raise ConfigError(f"mode: unknown serving mode {asked!r}; expected one of {', '.join(SERVING_MODES)}, "
                              f"{AUTO}")
        if asked not in ADAPTER_MODES:
            return None, None, None, ServedMode(asked, None, "asked", "asked for by the caller")
        active = self.memory.active_adapter(caller.tenant)
        if active is None:
            raise ConfigError(f"the mode {asked} needs an active adapter (run `logmem consolidate` first)")
        return (active.version, active.path, active.version,
                ServedMode(asked, active.version, "asked", "asked for by the caller"))

    def prompt_fits(self, messages: Sequence[dict[str, str]]) -> bool:
        """Whether `messages` are surely within the prompt-token limit by their length alone (a token is at least one
        byte, a character at most four): no tokenizer, no thread; False also while the limit is not known yet."""
        if self._prompt_limits is None:
            return False
        return 4 * sum(len(m["content"]) for m in messages) + len(messages) <= self._prompt_limits[0]

    def check_prompt(self, messages: Sequence[dict[str, str]]) -> None:
        """Refuse `messages` whose text is longer than the prompt-token limit (`max_prompt_tokens`, default the model's
        context), before any model work: a text over `limit` x the longest token's length is refused by its length
        alone, one under `limit` / 4 characters passes as it is; of those between, the first PREFIX_CHARS_PER_TOKEN x
        `limit` characters are counted first (enough to refuse most), and only what they do not decide is counted
        whole.

        Raises:
            PromptTooLongError: the messages have more tokens than the limit.
        """
        if self.prompt_fits(messages):
            return
        limit, longest, tokenizer = self._prompt_limit()
        texts = [m["content"] for m in messages]
        chars = sum(len(t) for t in texts)
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
                  interaction_id: str | None = None, user: str | None = None) -> Conditioned:
        """Condition a request for the upstream as `chat` conditions it for the local model: the answer it
        continues is judged first (`follow_up`), then the memory's exchanges and lessons note join the messages.
        With `with_adapter`, also the adapter version that answers the caller (`active_version`; a live canary's
        on its arm, as `answer_all` routes)."""
        messages = [dict(m) for m in messages]
        t0 = time.perf_counter()
        self.memory.follow_up(messages, tenant=caller.tenant)
        cond, conversation = self.conditioner().messages_for(messages, tenant=caller.tenant)
        found = self.memory.canaries.arm(caller.tenant, messages, user) if with_adapter else None
        arm = served_as(*found) if found is not None else None
        active = (found[0].version if found is not None and found[1] == "canary" else
                  self.active_version(caller) if with_adapter else None)
        return Conditioned(interaction_id or uuid.uuid4().hex, messages, conversation, cond.experiences,
                           cond.memory_tokens, (time.perf_counter() - t0) * 1e3, active, arm)

    def active_version(self, caller: Caller) -> str | None:
        """The adapter version that answers the caller (None: the base model): its active one, and under the default
        `choose` only where the tenant's serving mode uses it (as `chat` decides in local mode)."""
        if self.settings.choose == "default":
            return self.serving_mode(caller).adapter
        active = self.memory.active_adapter(caller.tenant)
        return active.version if active else None

    def evaluate(self, caller: Caller, logs: str | Path, items: Sequence[Any], *, modes: Sequence[str],
                 max_new_tokens: int = 16, predictions: str | Path | None = None, batch_size: int = 1,
                 progress: bool = False) -> tuple[list[Any], dict[str, Any]]:
        """`logmem eval`: ingest `logs` as the caller's (idempotent), then answer `items` (`EvalItem`s) in each of
        `modes` through the answer operation (`answer_all`, `batch_size` items at a time, nothing logged): "base" the
        model alone, "default" as the caller is served, any other mode asked for by name ("knn" is the memory's vote
        alone, no model); returns (per-mode results, the report's JSON)."""
        from logmem.model.evaluate import answered, check_modes, greedy_answer_ms, score

        check_modes(modes)
        report = self.memory.ingest_file(logs, tenant=caller.tenant, progress=progress)
        served = self.serving_mode(caller)
        active = self.memory.active_adapter(caller.tenant)
        adapter_modes = [m for m in modes if (served.mode if m == "default" else m) in ADAPTER_MODES]
        if adapter_modes and active is None:
            raise ConfigError("the modes consolidated and memory+adapter need an active adapter "
                              "(run `logmem consolidate` first)")

        def answers(mode: str, batch: Sequence[Any]) -> list[Any]:
            asks = [Ask(item.messages, model=self.base_model if mode == "base" else SERVED_MODEL,
                        max_tokens=max_new_tokens, use_memory=mode != "base",
                        mode=None if mode in ("base", "default") else mode, log=False) for item in batch]
            return [answered(a.reply) for a in self.answer_all(caller, asks)]

        generator, _, tokenizer, pool = self._model_parts()
        answer_ms = None
        if any(m in ("memory", "vote") for m in modes):
            with pool.using(None) as model:
                answer_ms = greedy_answer_ms(model, tokenizer)
        ordered = [m for m in modes if m not in adapter_modes] + adapter_modes
        results = score(answers, self.memory, items, modes=ordered, tenant=caller.tenant, predictions=predictions,
                        batch_size=batch_size, progress=progress)
        data = {"ingest": {k: v for k, v in report.to_json().items() if isinstance(v, int)},
                "results": [r.summary() for r in results], "greedy_32_tokens_ms": answer_ms,
                "config": vars(generator.gen_config),
                "adapter": active.version if active else None, "batch_size": batch_size,
                **({"serving_mode": served.to_json()} if "default" in modes else {})}
        return results, data

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


def _batched(ask: Ask) -> tuple[Any, ...]:
    """What asks answered in one batch must share."""
    return (ask.model, ask.mode, ask.user, ask.max_tokens, ask.temperature, ask.top_p, tuple(ask.stop),
            ask.use_memory, ask.log)


def _lora_key(tenant: str, name: str) -> str:
    """The adapter pool's key of a LoRA loaded by name for `tenant`, apart from the tenants' adapter versions ("v<n>")
    and from another tenant's LoRA of the same name (JSON keeps any tenant and name apart)."""
    return "lora:" + json.dumps([tenant, name])
