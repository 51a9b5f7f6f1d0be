"""`MemoryGenerator`: a drop-in wrapper of a Hugging Face causal LM that answers with the memory's best
experiences in context, and feeds every answer's feedback back into the memory."""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from logmem.memory import Hit, NotFoundError, VectorMemory

from .config import GeneratorConfig
from .prompting import ChatMarkers, Conditioning, Messages, render_messages, render_plain, select
from .voting import choose_answer

logger = logging.getLogger(__name__)
FEEDBACK_SUCCESS = {"like": 1.0, "copy": 1.0, "dislike": 0.0, "regenerate": 0.0, "correction": 0.0}


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
    chosen_by: str = "model"  # "model", or "vote" when a memory-supported answer was chosen

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in vars(self).items() if k != "experiences"}
        d["experiences"] = [{"id": h.id, "score": h.score, "sim": h.sim, "util": h.util, "rec": h.rec}
                            for h in self.experiences]
        return d


@dataclass
class _Pending:
    tenant: str
    user: str | None
    messages: Messages
    answer: str
    experience_ids: list[int]
    logged: bool = False
    feedback: list[dict[str, Any]] = field(default_factory=list)


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
        self._pending: OrderedDict[str, _Pending] = OrderedDict()

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not found normally: defer to the wrapped model
        if name in ("model", "tokenizer"):
            raise AttributeError(name)
        return getattr(self.model, name)

    # --- retrieval and conditioning -----------------------------------------------------------
    def retrieve(self, query: str, *, tenant: str | None = None) -> list[Hit]:
        if self.memory is None or self.gen_config.k == 0 or not query.strip():
            return []
        return self.memory.search(query, self.gen_config.k, tenant=tenant or self.tenant)

    def _condition(self, hits: Sequence[Hit]) -> Conditioning:
        return select(hits, self.tokenizer, self.gen_config)

    # --- drop-in generate ---------------------------------------------------------------------
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
        cond = self._condition(self.retrieve(query, tenant=tenant))
        if not cond.experiences:
            return None
        if found and self._markers is not None:
            # the template's lessons note (a system turn) comes along, just before the exchanges
            text = self._markers.exchanges(self.tokenizer, render_messages([], cond, self.gen_config.template))
            return prompt[:found[0]] + text + prompt[found[0]:] if text else None
        return render_plain(cond) + prompt

    # --- chat and feedback --------------------------------------------------------------------
    def chat(self, messages: Messages, *, tenant: str | None = None, user: str | None = None,
             max_new_tokens: int = 128, **kwargs: Any) -> Reply:
        """Answer the conversation `messages` with memory; keep it for `feedback`."""
        return self.chat_many([messages], tenant=tenant, user=user, max_new_tokens=max_new_tokens, **kwargs)[0]

    @torch.no_grad()
    def chat_many(self, conversations: Sequence[Messages], *, tenant: str | None = None, user: str | None = None,
                  max_new_tokens: int = 128, **kwargs: Any) -> list[Reply]:
        """Answer several conversations with memory in one batched generation (left-padded); each reply is
        kept for `feedback`. A reply's `model_ms` is its share of the batch's generation time."""
        tenant = tenant or self.tenant
        started, prompts, conds, retrieval_ms = time.perf_counter(), [], [], []
        for messages in conversations:
            query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            t0 = time.perf_counter()
            hits = self.retrieve(query, tenant=tenant)
            retrieval_ms.append((time.perf_counter() - t0) * 1e3)
            conds.append(self._condition(hits))
            prompts.append(self._prompt(messages, conds[-1]))
        enc = self._left_padded(prompts).to(self.model.device)
        lengths = [int(n) for n in enc["attention_mask"].sum(dim=1)]
        prompt_ms = ((time.perf_counter() - started) * 1e3 - sum(retrieval_ms)) / max(len(prompts), 1)
        t2 = time.perf_counter()
        texts: list[str | None] = [None] * len(prompts)
        chosen_by = ["model"] * len(prompts)
        if self.gen_config.choose == "vote":
            for i, cond in enumerate(conds):
                if cond.experiences:
                    ids = enc["input_ids"][i:i + 1, enc["input_ids"].shape[1] - lengths[i]:]  # its padding off
                    texts[i] = choose_answer(self.model, self.tokenizer, ids, cond.experiences, self.gen_config)
                    chosen_by[i] = "vote" if texts[i] is not None else "model"
        todo = [i for i, t in enumerate(texts) if t is None]
        if todo:
            width = max(lengths[i] for i in todo)  # the rows left may need less padding than the whole batch
            rows = {key: value[todo, -width:] for key, value in enc.items()}
            for i, text in zip(todo, self._generate_texts(rows, max_new_tokens, **kwargs)):
                texts[i] = text
        model_ms = (time.perf_counter() - t2) * 1e3 / max(len(prompts), 1)
        replies = []
        for messages, prompt, n_tokens, cond, text, how, r_ms in zip(conversations, prompts, lengths, conds, texts,
                                                                     chosen_by, retrieval_ms):
            iid = uuid.uuid4().hex
            used = [h.id for h in cond.experiences]
            self._remember(iid, _Pending(tenant, user, [dict(m) for m in messages], str(text), used))
            if self.memory is not None and used:
                self.memory.store.count_uses(tenant=tenant, ids=used)
            replies.append(Reply(text=str(text), interaction_id=iid, experiences=cond.experiences, prompt=prompt,
                                 prompt_tokens=n_tokens, memory_tokens=cond.memory_tokens,
                                 retrieval_ms=r_ms, prompt_ms=prompt_ms, model_ms=model_ms, chosen_by=how))
        return replies

    def _generate_texts(self, enc: dict[str, torch.Tensor], max_new_tokens: int, **kwargs: Any) -> list[str]:
        """Greedy (unless `kwargs` say otherwise) answers to a left-padded batch of prompt ids."""
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        out = self.model.generate(**enc, max_new_tokens=max_new_tokens, **kwargs)
        width = enc["input_ids"].shape[1]
        return [self.tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]

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

    def _remember(self, iid: str, pending: _Pending) -> None:
        self._pending[iid] = pending
        while len(self._pending) > self.gen_config.max_pending:
            self._pending.popitem(last=False)

    def feedback(self, interaction_id: str, kind: str, *, value: float | None = None,
                 text: str | None = None) -> dict[str, Any]:
        """Record feedback on a `chat` answer.

        The interaction becomes a log record of the memory (a liked answer becomes an experience; a
        correction's `text`, the right answer, becomes one with the failed answer as `rejected`), and the
        experiences that conditioned the answer get the outcome as utility credit.
        """
        pending = self._pending.get(interaction_id)
        if pending is None:
            raise NotFoundError(f"no answered interaction {interaction_id!r} awaits feedback "
                                f"(kept: the last {self.gen_config.max_pending})")
        if kind == "rating":
            if value is None:
                raise ValueError("a rating needs value= (1-5)")
            success = (min(max(value, 1.0), 5.0) - 1.0) / 4.0
        elif kind in FEEDBACK_SUCCESS:
            success = FEEDBACK_SUCCESS[kind]
        else:
            raise ValueError(f"unknown feedback kind {kind!r}; expected rating or one of {', '.join(FEEDBACK_SUCCESS)}")
        messages = [*pending.messages, {"role": "assistant", "content": pending.answer}]
        turn = len(messages) - 1
        pending.feedback.append({"turn": turn, "kind": kind, **({"value": value} if value is not None else {}),
                                 **({"text": text} if text else {})})
        if kind == "correction" and text:
            messages += [{"role": "user", "content": f"Correction: {text}"}, {"role": "assistant", "content": text}]
            pending.feedback.append({"turn": len(messages) - 1, "kind": "like"})
        result: dict[str, Any] = {"interaction_id": interaction_id, "success": success, "credited": 0,
                                  "experiences": 0, "conflicts": 0}
        if self.memory is None:
            return result
        if pending.experience_ids:
            result["credited"] = self.memory.record_outcome(pending.experience_ids, success, tenant=pending.tenant)
        if not pending.logged:
            record = {"id": f"chat-{interaction_id}", "tenant": pending.tenant, "user": pending.user,
                      "timestamp": time.time(), "messages": messages, "feedback": pending.feedback,
                      "metadata": {"retrieved": pending.experience_ids} if pending.experience_ids else {}}
            report = self.memory.ingest([record])
            pending.logged = True
            result["experiences"] = report.experiences + report.merged
            result["conflicts"] = report.conflicts  # it contradicted a near-duplicate's accepted answer
        return result
