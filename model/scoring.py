"""Scoring responses: their likelihood under a model (NLL per token, log p of whole answers) and whether an answer
matches a reference. Consolidation, its gate, the serving modes' measurement, the vote and the eval harness all
score here.

Rows are (prompt ids, response ids) token lists; batches are left-padded, so every response ends its row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

_PUNCT = re.compile(r"[^\w\s-]", re.UNICODE)
_PREFIX = re.compile(r"^\s*(label|answer)\s*:\s*", re.IGNORECASE)


def response_batch(rows: Sequence[tuple[list[int], list[int]]],
                   pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded (prompt + response) ids, attention mask, and a mask of the positions whose logits
    predict a response token."""
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    predicts = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        seq = p + r
        ids[i, width - len(seq):] = torch.tensor(seq)
        attn[i, width - len(seq):] = 1
        predicts[i, width - len(r) - 1: width - 1] = True
    return ids, attn, predicts


def response_logits(model: Any, rows: Sequence[tuple[list[int], list[int]]],
                    pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V) logits predicting every response token of `rows` and the (N,) tokens they predict.

    Rows are left-padded, so every response ends the row: the vocabulary projection (and its gradient)
    runs only over the last `max response + 1` positions, not the whole prompt.
    """
    ids, attn, predicts = response_batch(rows, pad)
    keep = max(len(r) for _, r in rows) + 1
    logits = model(input_ids=ids.to(model.device), attention_mask=attn.to(model.device),
                   logits_to_keep=keep).logits
    targets = ids[:, 1:][predicts[:, :-1]]
    return logits[predicts[:, -keep:].to(logits.device)], targets.to(logits.device)


@torch.no_grad()
def nll_per_token(model: Any, rows: Sequence[tuple[list[int], list[int]]], pad: int, batch_size: int = 16) -> float:
    """Mean negative log-likelihood per response token of `rows`, each response read after its prompt."""
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        logits, targets = response_logits(model, rows[i:i + batch_size], pad)
        total += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum").item()
        count += int(targets.numel())
    return total / max(count, 1)


@torch.no_grad()
def answer_logprobs(model: Any, prompt_ids: torch.Tensor, answers: list[list[int]], *,
                    read: tuple[torch.Tensor, Any] | None = None) -> torch.Tensor:
    """log p(answer_i | prompt) for each token list in `answers`, reading the prompt once.

    Args:
        prompt_ids: int64 (1, T).
        answers: token ids of each answer (its end token included).
        read: the prompt already read: (log p of the token after it (V,), its cache of exactly T tokens, which
            this call extends).
    Returns:
        float32 (len(answers),).
    """
    if read is None:
        out = model(input_ids=prompt_ids, use_cache=True, logits_to_keep=1)
        read = torch.log_softmax(out.logits[0, -1].float(), dim=-1), out.cache
    first, cache = read
    n, width = len(answers), max(len(a) for a in answers)
    scores = torch.tensor([first[a[0]].item() for a in answers])
    if width == 1:
        return scores
    cache.batch_repeat_interleave(n)
    pad = 0
    ids = torch.tensor([a + [pad] * (width - len(a)) for a in answers], device=prompt_ids.device)
    real = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in answers], device=prompt_ids.device)
    mask = torch.cat([torch.ones(n, prompt_ids.shape[1], dtype=real.dtype, device=real.device), real[:, :-1]], 1)
    logits = model(input_ids=ids[:, :-1], attention_mask=mask, cache=cache, use_cache=True).logits
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    return scores + (logp * real[:, 1:]).sum(dim=1).cpu()


def normalize_answer(text: str) -> str:
    """First line, without a leading `label:`/`answer:`, lowercased, punctuation removed."""
    first = text.strip().split("\n", 1)[0] if text.strip() else ""
    return " ".join(_PUNCT.sub(" ", _PREFIX.sub("", first).lower()).split())


def is_correct(output: str, references: Sequence[str]) -> bool:
    got = normalize_answer(output)
    return bool(got) and any(got == normalize_answer(r) for r in references)


def contains_reference(output: str, references: Sequence[str]) -> bool:
    """Whether the whole answer (every line), lowercased and stripped of punctuation, contains a reference so
    normalised as whole words: the free-text figure, where an answer states the fact inside a sentence."""
    words = f" {' '.join(_PUNCT.sub(' ', output.lower()).split())} "
    wanted = (" ".join(_PUNCT.sub(" ", r.lower()).split()) for r in references)
    return any(f" {w} " in words for w in wanted if w)
