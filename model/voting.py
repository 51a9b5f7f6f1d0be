"""Memory-supported answers: choose among the answers the retrieved experiences gave.

For tasks whose answers repeat (labels, routes, canned replies), the model reads the prompt once and
scores each distinct short answer of the retrieved experiences:
`score(a) = log p_model(a, eos | prompt) + vote_prior * log(share(a))`, where `share(a)` is a's part of the
retrieval scores. The vote keeps answers to what the memory supports; the model breaks its ties.

Memory mode's `calibrate` chooses among the same answers with no vote prior: the model's score less its own
running preference for each answer (`AnswerBias`), which a small model shows whatever it reads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from logmem.memory import Hit

from .config import GeneratorConfig
from .scoring import answer_logprobs


def vote_shares(experiences: Sequence[Hit]) -> dict[str, float]:
    """Each distinct answer's share of the (positive part of the) retrieval scores."""
    weights: dict[str, float] = {}
    for h in experiences:
        weights[h.response.strip()] = weights.get(h.response.strip(), 0.0) + max(h.score, 1e-6)
    total = sum(weights.values())
    return {a: w / total for a, w in weights.items()}


def _choosable(tokenizer: Any, answers: Iterable[str], config: GeneratorConfig) -> tuple[list[str], list[list[int]]]:
    """The answers short enough to choose among (at most `vote_max_tokens`), with their tokens and the end token."""
    eos = tokenizer.eos_token_id
    candidates, tokens = [], []
    for answer in answers:
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if 0 < len(ids) <= config.vote_max_tokens:
            candidates.append(answer)
            tokens.append(ids + ([eos] if eos is not None else []))
    return candidates, tokens


def choose_answer(model: Any, tokenizer: Any, prompt_ids: torch.Tensor, experiences: Sequence[Hit],
                  config: GeneratorConfig) -> str | None:
    """The best memory-supported answer, or None when no retrieved answer is short enough to choose."""
    return vote_among(tokenizer, experiences, config, lambda tokens: answer_logprobs(model, prompt_ids, tokens))


def vote_among(tokenizer: Any, experiences: Sequence[Hit], config: GeneratorConfig,
               logprobs: Callable[[list[list[int]]], torch.Tensor]) -> str | None:
    """`choose_answer` with the answers' scores from `logprobs` (token lists -> log p of each after the prompt)."""
    shares = vote_shares(experiences)
    candidates, tokens = _choosable(tokenizer, shares, config)
    if not candidates:
        return None
    logp = logprobs(tokens)
    best = max(range(len(candidates)),
               key=lambda i: float(logp[i]) + config.vote_prior * math.log(shares[candidates[i]]))
    return candidates[best]


class AnswerBias:
    """The model's own preference for each answer, whatever it reads: the running mean, over the requests it has
    scored, of an answer's log-probability less the mean over the answers scored with it (batch calibration, from
    the model's scores alone: no references). Thread-safe; one per tenant."""

    def __init__(self) -> None:
        self._sum: dict[str, float] = {}
        self._n: dict[str, int] = {}
        self._lock = threading.Lock()

    def of(self, answer: str) -> float:
        with self._lock:
            n = self._n.get(answer, 0)
            return self._sum[answer] / n if n else 0.0

    def update(self, answers: Sequence[str], logp: Sequence[float]) -> None:
        mean = sum(logp) / len(logp)
        with self._lock:
            for a, lp in zip(answers, logp):
                self._sum[a] = self._sum.get(a, 0.0) + lp - mean
                self._n[a] = self._n.get(a, 0) + 1


def memory_answer_scores(model: Any, tokenizer: Any, prompt_ids: torch.Tensor, experiences: Sequence[Hit],
                         config: GeneratorConfig) -> tuple[list[str], list[float]]:
    """The distinct short answers of `experiences` (in retrieval order) and `log p(a, eos | prompt)` of each."""
    candidates, tokens = _choosable(tokenizer, dict.fromkeys(h.response.strip() for h in experiences), config)
    if not candidates:
        return [], []
    return candidates, [float(x) for x in answer_logprobs(model, prompt_ids, tokens)]


def calibrated_answer(model: Any, tokenizer: Any, prompt_ids: torch.Tensor, experiences: Sequence[Hit],
                      config: GeneratorConfig, bias: AnswerBias) -> str | None:
    """The memory's answer the model reading the prompt scores best, its own label bias taken off:
    `log p(a, eos | prompt) - bias(a)` (then `bias` learns this request's scores). None when no retrieved answer
    is short enough to choose among."""
    candidates, logp = memory_answer_scores(model, tokenizer, prompt_ids, experiences, config)
    if not candidates:
        return None
    best = max(range(len(candidates)), key=lambda i: logp[i] - bias.of(candidates[i]))
    bias.update(candidates, logp)
    return candidates[best]
