"""`MemoryGenerator`: a drop-in wrapper of a Hugging Face causal LM that answers with the memory's best
experiences in context, and feeds every answer's feedback back into the memory."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from logmem.memory import Hit, NotFoundError, VectorMemory
from logmem.memory.text import clean_text
from tqdm import tqdm

from .config import GeneratorConfig
from .modes import ADAPTER_MODES, AUTO, ServedMode, left_out_search, served_mode
from .prompting import ChatMarkers, Conditioning, Messages, render_messages, render_plain, select
from .reuse import ReuseRule, calibrate, spread
from .threads import on_generation_threads
from .voting import AnswerBias, calibrated_answer, choose_answer, memory_answer_scores

logger = logging.getLogger(__name__)
AUTO_REFRESH_SECONDS = 60.0  # choose="auto" measures a tenant's answer repetition at most this often
REUSE_REFRESH_SECONDS = 600.0  # `reuse` calibrates a tenant's margin again after this long (its memory grows)


@dataclass
class Reply:
    """One answer of `MemoryGenerator.chat`."""

    text: str
    interaction_id: str
    experiences: list[Hit]  # the experiences that conditioned the answer, in prompt order
    prompt: str  # the exact prompt the model saw, memory included
    prompt_tokens: int
    memory_tokens: int  # prompt tokens spent on experiences and lessons
    retrieval_ms: float  # embedding + search
    prompt_ms: float  # selection, templating, tokenisation
    model_ms: float  # the wrapped model's generation
    chosen_by: str = "model"  # "model"; "vote" when a memory-supported answer was chosen; "reuse" when a trusted
    # experience's answer was given verbatim (model/reuse.py)
    completion_tokens: int = 0  # tokens the model generated (the chosen answer's, when the vote chose)
    finish_reason: str = "stop"  # "stop" (end of sequence, a stop string, a chosen answer) or "length"
    mode: str = "memory"  # the mode it was answered in (model/modes.py): memory, vote, auto, consolidated, ...

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in vars(self).items() if k != "experiences"}
        d["experiences"] = [{"id": h.id, "score": h.score, "sim": h.sim, "util": h.util, "rec": h.rec}
                            for h in self.experiences]
        return d


def log_reply(memory: VectorMemory, reply: Reply, *, tenant: str, messages: Messages, user: str | None,
              adapter: str | None, choose: str | None = None, upstream: str | None = None,
              canary: dict[str, Any] | None = None) -> None:
    """Keep a served answer in SQL, as every front end and backend keeps one (the one place its served record is
    built): the conversation, the experiences that conditioned it with their score parts, the adapter that answered,
    and the mode, timings and token counts. `choose`: the generator's setting (local answers); `upstream`: the model
    an OpenAI-compatible server answered with; `canary`: the canary arm it was served on (`served_as`), whose
    feedback counts for that arm."""
    details: dict[str, Any] = {"timings": {"retrieval_ms": reply.retrieval_ms, "prompt_ms": reply.prompt_ms,
                                           "model_ms": reply.model_ms},
                               "chosen_by": reply.chosen_by, "mode": reply.mode}
    if choose is not None:
        details["choose"] = choose
    details.update(prompt_tokens=reply.prompt_tokens, memory_tokens=reply.memory_tokens)
    if upstream is not None:
        details["upstream"] = upstream
    if canary is not None:
        details["canary"] = canary
    memory.log_answer(tenant=tenant, interaction_id=reply.interaction_id, messages=messages, answer=reply.text,
                      hits=reply.experiences, user=user, adapter=adapter, details=details)


class MemoryGenerator:
    """Wraps `model` so that `generate` and `chat` see the memory's best experiences.

    With no memory, or an empty one, `generate` is the wrapped model's own `generate`, token for token.
    Attributes it does not define fall through to the wrapped model (`config`, `device`, ...).
    """

    def __init__(self, model: Any, tokenizer: Any, memory: VectorMemory | None = None, *,
                 config: GeneratorConfig | None = None, tenant: str = "default") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.memory = memory
        self.gen_config = config or GeneratorConfig()
        self.tenant = tenant
        self._markers = ChatMarkers.probe(tokenizer)
        self._repetition: dict[str, tuple[float, float]] = {}  # tenant -> (when measured, answer repetition)
        self._bias: dict[str, AnswerBias] = {}  # tenant -> the model's own preference per answer (`calibrate`)
        self._reuse: dict[str, tuple[float, ReuseRule]] = {}  # tenant -> (when calibrated, its reuse rule)

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not found normally: defer to the wrapped model
        if name in ("model", "tokenizer"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def mode(self, tenant: str | None = None, adapter: str | None = None) -> ServedMode:
        """The mode this generator answers `tenant` in when it answers with `adapter` (the version its model carries;
        None: the base model). Under choose="default" the tenant's serving mode (`model/modes.py`); an adapter mode
        whose adapter the model does not carry answers as "auto". Any other `choose` is that memory mode."""
        choose = self.gen_config.choose
        if choose != "default":
            return ServedMode("memory" if choose == "off" else choose, adapter, "config", f"choose={choose!r}")
        if self.memory is None:
            return ServedMode("memory", adapter, "config", "no memory")
        served = served_mode(self.memory, tenant or self.tenant)
        if served.mode in ADAPTER_MODES and served.adapter != adapter:
            return ServedMode(AUTO, adapter, "default", f"served {served.mode} with adapter {served.adapter}, "
                                                        f"but answering with {adapter or 'the base model'}")
        return served

    def votes(self, tenant: str | None = None, mode: ServedMode | None = None) -> bool:
        """Whether `tenant`'s answers are chosen by the memory's vote: always in the vote mode; under "auto" where
        its answers repeat (`VectorMemory.answer_repetition` >= `auto_repetition`, measured at most every
        `AUTO_REFRESH_SECONDS`), so a label-like tenant gets the vote and a free-text one free generation."""
        choose = (mode or self.mode(tenant)).choose
        if choose != "auto" or self.memory is None:
            return choose == "vote"
        return self._repeats(tenant)

    def _repeats(self, tenant: str | None) -> bool:
        """Whether the tenant's answers repeat (label-like), measured at most every `AUTO_REFRESH_SECONDS`."""
        if self.memory is None:
            return False
        tenant, now = tenant or self.tenant, time.monotonic()
        measured = self._repetition.get(tenant)
        if measured is None or now - measured[0] > AUTO_REFRESH_SECONDS:
            measured = self._repetition[tenant] = (now, self.memory.answer_repetition(tenant))
        return measured[1] >= self.gen_config.auto_repetition

    def _constraint(self, conds: Sequence[Conditioning], width: int) -> Any:
        """Under `constrain`, a `prefix_allowed_tokens_fn` that keeps each row's generation to the short answers its
        experiences gave (end token included); a row without such answers is left free. None: nothing to keep."""
        eos = self.tokenizer.eos_token_id
        allowed: list[list[list[int]] | None] = []
        for cond in conds:
            answers = {h.response.strip() for h in cond.experiences}
            seqs = [ids + [eos] for ids in (self.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers)
                    if 0 < len(ids) <= self.gen_config.vote_max_tokens]
            allowed.append(seqs or None)
        if not any(allowed):
            return None
        everything = list(range(len(self.tokenizer)))

        def next_tokens(row: int, ids: torch.Tensor) -> list[int]:
            seqs = allowed[row]
            if seqs is None:
                return everything
            done = ids[width:].tolist()
            nxt = {q[len(done)] for q in seqs if len(q) > len(done) and q[:len(done)] == done}
            return sorted(nxt) or [eos]

        return next_tokens

    def reuse_rule(self, tenant: str | None = None) -> ReuseRule:
        """The tenant's calibrated `ReuseRule` (`model/reuse.py`), calibrated again every `REUSE_REFRESH_SECONDS`."""
        tenant, now = tenant or self.tenant, time.monotonic()
        known = self._reuse.get(tenant)
        if known is None or now - known[0] > REUSE_REFRESH_SECONDS:
            if self.memory is None:
                raise NotFoundError("reuse needs a memory")
            known = self._reuse[tenant] = (now, calibrate(self.memory, tenant, self.gen_config))
        return known[1]

    def _answer_bias(self, tenant: str) -> AnswerBias:
        """The tenant's `AnswerBias`. On first use it is measured on `calibrate_warmup` of the tenant's stored
        experiences, spread over them by id: each one's request asked with its neighbours (itself left out), as a
        request would be, and the model's scores of the retrieved answers taken in (no answer is looked at)."""
        bias = self._bias.get(tenant)
        if bias is not None:
            return bias
        bias, n = AnswerBias(), self.gen_config.calibrate_warmup
        if n and self.memory is not None:
            started = time.perf_counter()
            held = spread(self.memory, tenant, n)
            for e in tqdm(held, desc=f"calibrating {tenant}", disable=None):
                cond = self._condition(left_out_search(self.memory, e, self.gen_config.k, tenant))
                if not cond.experiences:
                    continue
                prompt = self._prompt([{"role": "user", "content": e.trigger}], cond)
                ids = self._left_padded([prompt])["input_ids"].to(self.model.device)
                candidates, logp = memory_answer_scores(self.model, self.tokenizer, ids, cond.experiences,
                                                        self.gen_config)
                if candidates:
                    bias.update(candidates, logp)
            logger.info("tenant %r: the model's preference per answer measured on %d of its experiences in %.1f s",
                        tenant, len(held), time.perf_counter() - started)
        return self._bias.setdefault(tenant, bias)

    # --- retrieval and conditioning -----------------------------------------------------------
    def retrieve(self, query: str, *, tenant: str | None = None) -> list[Hit]:
        if self.memory is None or self.gen_config.k == 0 or not query.strip():
            return []
        return self.memory.search(query, self.gen_config.k, tenant=tenant or self.tenant)

    def _condition(self, hits: Sequence[Hit], focus: bool = False) -> Conditioning:
        return select(hits, self.tokenizer, self.gen_config, focus=focus)

    def _focus(self, tenant: str | None, mode: ServedMode | None = None) -> bool:
        """Whether `tenant`'s prompt keeps to the hits near the best (`focus_margin`): free generation on a tenant
        whose answers do not repeat. Where they repeat, the neighbours' agreement is what the vote (or the model)
        reads, so every hit stays."""
        if self.memory is None:
            return False
        mode = mode or self.mode(tenant)
        return mode.uses_memory and not self.votes(tenant, mode) and not self._repeats(tenant)

    def prompt_for(self, messages: Messages, *, tenant: str | None = None) -> tuple[list[Hit], Conditioning, str]:
        """What `chat` would put before the model for `messages`, without generating: every retrieved hit (in the
        memory's MMR order), the conditioning that fits the budgets, and the exact prompt text."""
        hits = self.retrieve(_last_user(messages), tenant=tenant or self.tenant)
        cond = self._condition(hits, self._focus(tenant or self.tenant))
        return hits, cond, self._prompt(messages, cond)

    def messages_for(self, messages: Messages, *, tenant: str | None = None) -> tuple[Conditioning, Messages]:
        """What `chat` conditions `messages` with, at the message level (what an OpenAI-compatible server that
        applies its own chat template receives): the conditioning that fits the budgets and the conversation with
        the template's exchanges and lessons note. `chat` renders exactly this conversation with the tokenizer."""
        tenant = tenant or self.tenant
        cond = self._condition(self.retrieve(_last_user(messages), tenant=tenant), self._focus(tenant))
        return cond, render_messages(messages, cond, self.gen_config.template)

    # --- drop-in generate ---------------------------------------------------------------------
    @on_generation_threads
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
                 tenant: str | None = None, **kwargs: Any) -> torch.Tensor:
        """Like the wrapped model's `generate`; each row's prompt gains its best experiences.

        Returns sequences that begin with the caller's own `input_ids` (so `out[:, input_ids.shape[1]:]`
        is the answer), padded after the answer with the pad token like any batched generation.
        """
        if self.memory is None or input_ids is None or input_ids.dim() != 2:
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        prompts = [self.tokenizer.decode(row[m.bool()], skip_special_tokens=False)
                   for row, m in zip(input_ids, mask)]
        conditioned = [self._splice(p, tenant) for p in prompts]
        if all(c is None for c in conditioned):
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        texts = [c if c is not None else p for c, p in zip(conditioned, prompts)]
        enc = self._left_padded(texts).to(input_ids.device)
        out = self.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs)
        return torch.cat([input_ids, out[:, enc["input_ids"].shape[1]:]], dim=1)

    def _splice(self, prompt: str, tenant: str | None) -> str | None:
        """`prompt` with the experiences for its last user turn (and their lessons, as a system note)
        inserted before that turn, or None."""
        found = self._markers.last_user(prompt) if self._markers else None
        query = found[1] if found else prompt
        cond = self._condition(self.retrieve(query, tenant=tenant), self._focus(tenant))
        if not cond.experiences:
            return None
        if found and self._markers is not None:
            # the template's lessons note (a system turn) comes along, just before the exchanges
            text = self._markers.exchanges(self.tokenizer, render_messages([], cond, self.gen_config.template))
            return prompt[:found[0]] + text + prompt[found[0]:] if text else None
        return render_plain(cond) + prompt

    # --- chat and feedback --------------------------------------------------------------------
    def chat(self, messages: Messages, *, tenant: str | None = None, user: str | None = None,
             max_new_tokens: int = 128, log: bool = True, adapter: str | None = None,
             stop: Sequence[str] = (), interaction_id: str | None = None, mode: ServedMode | None = None,
             **kwargs: Any) -> Reply:
        """Answer the conversation `messages` with memory; the answer is logged for `feedback` (see `chat_many`)
        under `interaction_id` (default: a new random id)."""
        return self.chat_many([messages], tenant=tenant, user=user, max_new_tokens=max_new_tokens, log=log,
                              adapter=adapter, stop=stop, interaction_ids=[interaction_id] if interaction_id else None,
                              mode=mode, **kwargs)[0]

    @on_generation_threads
    @torch.no_grad()
    def chat_many(self, conversations: Sequence[Messages], *, tenant: str | None = None, user: str | None = None,
                  max_new_tokens: int = 128, log: bool = True, adapter: str | None = None,
                  stop: Sequence[str] = (), interaction_ids: Sequence[str] | None = None,
                  mode: ServedMode | None = None, canary: Sequence[dict[str, Any] | None] | None = None,
                  **kwargs: Any) -> list[Reply]:
        """Answer several conversations with memory in one batched generation (left-padded). A reply's
        `model_ms` is its share of the batch's generation time.

        With `log` (and a memory), each answer is kept in the memory's SQL store as an answered interaction
        (with the experiences that conditioned it and `adapter`, the adapter version that answered), so that
        `feedback` can reach it from any process, later; a request that continues an earlier logged answer's
        conversation judges that answer first (`VectorMemory.follow_up`). `log=False` answers and keeps nothing
        (evaluation). Generation ends at any of the `stop` strings, which the answer does not include. `mode`: the
        mode the caller resolved for `tenant` and `adapter` (default: `self.mode(tenant, adapter)`); `canary`: per
        conversation, the canary arm the caller routed it to (logged with its answer)."""
        tenant = tenant or self.tenant
        # the text boundary (logmem.memory.text), as for every front end: the tokenizer never sees text it did not pass
        conversations = [[{**m, "content": clean_text(m["content"])} for m in messages] for messages in conversations]
        if log and self.memory is not None:
            for messages in conversations:
                self.memory.follow_up(messages, tenant=tenant)
        mode = mode or self.mode(tenant, adapter)
        focus = self._focus(tenant, mode)
        started, prompts, conds, retrieval_ms, found = time.perf_counter(), [], [], [], []
        for messages in conversations:
            t0 = time.perf_counter()
            hits = self.retrieve(_last_user(messages), tenant=tenant) if mode.uses_memory else []
            retrieval_ms.append((time.perf_counter() - t0) * 1e3)
            found.append(hits)
            conds.append(self._condition(hits, focus))
            prompts.append(self._prompt(messages, conds[-1]))
        enc = self._left_padded(prompts).to(self.model.device)
        lengths = [int(n) for n in enc["attention_mask"].sum(dim=1)]
        prompt_ms = ((time.perf_counter() - started) * 1e3 - sum(retrieval_ms)) / max(len(prompts), 1)
        t2 = time.perf_counter()
        texts: list[str | None] = [None] * len(prompts)
        counts = [(0, "stop")] * len(prompts)  # (completion tokens, finish reason)
        chosen_by = ["model"] * len(prompts)
        if focus and self.gen_config.reuse:  # a trusted experience's own answer, where the calibrated rule allows
            rule = self.reuse_rule(tenant)
            for i, hits in enumerate(found):
                if (hit := rule.pick(hits)) is not None:
                    texts[i], chosen_by[i], conds[i] = hit.response, "reuse", Conditioning([hit], [], 0)
                    counts[i] = (len(self.tokenizer(hit.response, add_special_tokens=False)["input_ids"]), "stop")
        if self.votes(tenant, mode):
            for i, cond in enumerate(conds):
                if cond.experiences:
                    ids = enc["input_ids"][i:i + 1, enc["input_ids"].shape[1] - lengths[i]:]  # its padding off
                    texts[i] = choose_answer(self.model, self.tokenizer, ids, cond.experiences, self.gen_config)
                    chosen_by[i] = "vote" if texts[i] is not None else "model"
                    if texts[i] is not None:
                        counts[i] = (len(self.tokenizer(texts[i], add_special_tokens=False)["input_ids"]), "stop")
        constrained = (self.gen_config.constrain and mode.uses_memory and mode.choose != "vote"
                       and self._repeats(tenant))
        if constrained and self.gen_config.calibrate:  # the model picks among the memory's answers, its bias off
            bias = self._answer_bias(tenant)
            for i, cond in enumerate(conds):
                if cond.experiences and texts[i] is None:
                    ids = enc["input_ids"][i:i + 1, enc["input_ids"].shape[1] - lengths[i]:]
                    texts[i] = calibrated_answer(self.model, self.tokenizer, ids, cond.experiences, self.gen_config,
                                                 bias)
                    if texts[i] is not None:
                        counts[i] = (len(self.tokenizer(texts[i], add_special_tokens=False)["input_ids"]), "stop")
        todo = [i for i, t in enumerate(texts) if t is None]
        if todo:
            width = max(lengths[i] for i in todo)  # the rows left may need less padding than the whole batch
            rows = {key: value[todo, -width:] for key, value in enc.items()}
            if stop:
                kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
            if constrained:
                fn = self._constraint([conds[i] for i in todo], width)
                if fn is not None:
                    kwargs["prefix_allowed_tokens_fn"] = fn
            for i, (text, n, ended) in zip(todo, self._generate_texts(rows, max_new_tokens, **kwargs)):
                texts[i] = _cut(text, stop)
                counts[i] = (n, "stop" if ended or texts[i] != text or n < max_new_tokens else "length")
        model_ms = (time.perf_counter() - t2) * 1e3 / max(len(prompts), 1)
        replies = []
        ids = list(interaction_ids) if interaction_ids is not None else [uuid.uuid4().hex for _ in conversations]
        arms = list(canary) if canary is not None else [None] * len(conversations)
        for iid, messages, prompt, n_tokens, cond, text, how, r_ms, (n_out, finish), arm in zip(
                ids, conversations, prompts, lengths, conds, texts, chosen_by, retrieval_ms, counts, arms):
            reply = Reply(text=str(text), interaction_id=iid, experiences=cond.experiences, prompt=prompt,
                          prompt_tokens=n_tokens, memory_tokens=cond.memory_tokens, retrieval_ms=r_ms,
                          prompt_ms=prompt_ms, model_ms=model_ms, chosen_by=how, completion_tokens=n_out,
                          finish_reason=finish, mode=mode.mode)
            if log and self.memory is not None:
                log_reply(self.memory, reply, tenant=tenant, messages=messages, user=user, adapter=adapter,
                          choose=self.gen_config.choose, canary=arm)
            replies.append(reply)
        return replies

    def _generate_texts(self, enc: dict[str, torch.Tensor], max_new_tokens: int,
                        **kwargs: Any) -> list[tuple[str, int, bool]]:
        """Greedy (unless `kwargs` say otherwise) answers to a left-padded batch of prompt ids: each answer's
        text, how many tokens were generated for it (its end-of-sequence token included), and whether it ended
        with one (else it ran to `max_new_tokens` or a stop string)."""
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        out = self.model.generate(**enc, max_new_tokens=max_new_tokens, **kwargs)
        width = enc["input_ids"].shape[1]
        eos = self.model.generation_config.eos_token_id if self.model.generation_config is not None else None
        ends = set(eos if isinstance(eos, list) else [eos] if eos is not None else [self.tokenizer.eos_token_id])
        answers = []
        for row in out:
            ids = row[width:].tolist()
            n = next((i + 1 for i, t in enumerate(ids) if t in ends), len(ids))
            answers.append((self.tokenizer.decode(row[width:], skip_special_tokens=True).strip(), n, n < len(ids)
                            or (bool(ids) and ids[-1] in ends)))
        return answers

    def _left_padded(self, texts: Sequence[str]) -> Any:
        """Token ids of `texts`, left-padded into one batch (generation continues every row at its end)."""
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            return self.tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            self.tokenizer.padding_side = side

    def _prompt(self, messages: Messages, cond: Conditioning) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            conversation = render_messages(messages, cond, self.gen_config.template)
            return str(self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True))
        plain = "\n".join(m["content"] for m in messages)
        return (render_plain(cond) + plain) if cond.experiences else plain

    def feedback(self, interaction_id: str, kind: str, *, value: float | None = None, text: str | None = None,
                 tenant: str | None = None, event_id: str | None = None) -> dict[str, Any]:
        """Record feedback on a logged `chat` answer (`VectorMemory.feedback`): the experiences that conditioned
        it get the outcome as utility credit, and the interaction is distilled (a liked answer becomes an
        experience; a correction's `text`, the right answer, one with the failed answer as `rejected`).

        Returns `FeedbackResult.to_json()`, where `experiences` counts new and merged experiences.
        """
        if self.memory is None:
            raise NotFoundError(f"no answered interaction {interaction_id!r}: a generator without memory logs none")
        result = self.memory.feedback(interaction_id, kind, tenant=tenant or self.tenant, value=value, text=text,
                                      event_id=event_id)
        return {**result.to_json(), "experiences": result.experiences + result.merged}


def _cut(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first of the `stop` strings."""
    ends = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[:min(ends)].rstrip() if ends else text


def _last_user(messages: Messages) -> str:
    """The last user message's text (what retrieval searches for)."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
