"""Training pairs of a consolidation job (the experiences it teaches are its lineage plan's: `lineage.plan_job`):
the held-out split, and each pair's token ids (the student's prompt, the teacher's prompt with retrieved
experiences, the response, a rejected answer)."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from logmem.memory import VectorMemory
from logmem.memory.store import ExperienceData
from tqdm import tqdm

from .config import ConsolidationConfig, GeneratorConfig
from .prompting import chat_ids, render_messages, select
from .scoring import nll_per_token

logger = logging.getLogger(__name__)


@dataclass
class Pair:
    """One training example: the student's prompt, the teacher's prompt, the response tokens, and the
    tokens of the answer a correction rejected (for the DPO term; None when there is none)."""

    experience_id: int
    student: list[int]
    teacher: list[int]
    response: list[int]
    rejected: list[int] | None = None


def split_holdout(experiences: Sequence[ExperienceData], config: ConsolidationConfig
                  ) -> tuple[list[ExperienceData], list[ExperienceData]]:
    """(train, holdout), a seeded shuffle; the holdout is at least one experience."""
    order = list(experiences)
    random.Random(config.seed).shuffle(order)
    n = min(config.max_holdout, max(1, round(len(order) * config.holdout)))
    return order[n:], order[:n]


def build_pairs(experiences: Sequence[ExperienceData], tokenizer: Any, memory: VectorMemory | None, tenant: str,
                config: ConsolidationConfig, progress: bool = False,
                extra: dict[int, list[str]] | None = None) -> list[Pair]:
    """Token ids of each experience's student prompt, teacher prompt (retrieved experiences, the
    experience itself left out) and response (end token included); one pair for its trigger and one for
    each request in `extra[experience id]` (other requests that used it and went well). With a DPO term,
    the trigger's pair also carries the answer its correction rejected."""
    gen_config = GeneratorConfig(k=config.teacher_k)
    few = config.student_k or config.teacher_k
    need_teacher = config.method != "sft" or bool(config.with_memory)
    extra = extra or {}
    pairs, cut = [], 0

    def answer(text: str) -> list[int]:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
        return ids[: config.max_length - 1]

    for e in tqdm(experiences, desc="pairs", unit="ex", disable=not progress):
        response = answer(e.response)
        rejected = answer(e.rejected) if config.dpo_weight and e.rejected else None
        keep = max(config.max_length - max(len(response), len(rejected or [])), 1)
        for n, request in enumerate([e.trigger, *extra.get(e.id, [])]):
            question = [{"role": "user", "content": request}]
            bare = chat_ids(tokenizer, question)
            teacher = bare
            student = bare
            if need_teacher and memory is not None:
                hits = [h for h in memory.search(request, config.teacher_k + 1, tenant=tenant) if h.id != e.id]
                cond = select(hits[: config.teacher_k], tokenizer, gen_config)
                teacher = chat_ids(tokenizer, render_messages(question, cond, gen_config.template))
                student = teacher if config.with_memory else bare
                if config.with_memory and few < config.teacher_k:  # the best by score (search order is MMR's)
                    best = sorted(hits[: config.teacher_k], key=lambda h: h.score, reverse=True)[:few]
                    student = chat_ids(tokenizer, render_messages(question, select(best, tokenizer, gen_config),
                                                                  gen_config.template))
            cut += len(teacher) > keep or len(student) > keep
            pairs.append(Pair(e.id, student[-keep:], teacher[-keep:], response, rejected if n == 0 else None))
    if cut:
        logger.warning("%d of %d training prompts are longer than max_length=%d and lose their start "
                       "(system prompt, first experiences); raise max_length", cut, len(pairs), config.max_length)
    return pairs


def response_nll(model: Any, pairs: Sequence[Pair], pad: int, batch_size: int = 16) -> float:
    """Mean negative log-likelihood per response token of `pairs` given their student prompts."""
    return nll_per_token(model, [(p.student, p.response) for p in pairs], pad, batch_size)
