"""Reading held-out prompts once: one forward pass per prompt gives every figure a job measures with those weights.

A job's gate, its serving modes, its student choice and its early stop all read the same held-out prompts. Each
prompt is read once with its reference response after it (teacher forcing), and the pass gives:
- the response's negative log-likelihood (the NLL figures);
- the greedy answer: read off the teacher-forced logits while their argmax agrees with the reference, and decoded
  on from the cache, cut back to where they part, only where it does not (a model that answers right costs no
  decoding step);
- the vote's choice among the retrieved experiences' answers (`model/voting.py`), scored from the same cache cut
  back to the prompt.
On 2 CPU cores a memory prompt of NFCats (~355 tokens) takes ~0.5 s to read, the same per token alone as in a
batch of 16; reading it once instead of once per figure took NFCats' job from 3 min 15 s to 2 min 3 s between the
generator loaded and the first training step (docs/benchmarks/consolidation.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from logmem.memory.store import ExperienceData
from tqdm import tqdm

from .config import GeneratorConfig
from .prompting import Conditioning
from .scoring import answer_logprobs, is_correct
from .voting import vote_among

logger = logging.getLogger(__name__)


@dataclass
class HeldOut:
    """A job's held-out experiences as requests: each one's bare prompt, its prompt with the memory (its own
    experience left out of the retrieval), and its expected answer."""

    experiences: list[ExperienceData]
    bare: list[list[int]]
    with_memory: list[list[int]]
    conditioning: list[Conditioning]
    responses: list[list[int]]  # the accepted answer's tokens, end token included
    metric: str  # "accuracy" (label-like answers) or "nll"


@dataclass
class Reading:
    """What one pass over held-out prompts gave: the mean NLL per response token, and where asked for, each
    prompt's greedy answer and the vote's answer ("" where the memory had no answer short enough to choose)."""

    nll: float
    answers: list[str] = field(default_factory=list)
    votes: list[str] = field(default_factory=list)


class HeldOutNll:
    """A job's readings of its held-out slice (model/reading.py), each (weights, prompts) read once: `who` names
    the weights (the caller's word: "base", "active", "student", "step 20"), `prompts` the prompts ("bare" or
    "with_memory"). A reading gives the response NLL per token and, where answers are label-like, what the
    weights' modes answer: the greedy answers, and for the `base` weights (which answer the memory modes) the
    vote's on the memory's prompts and no answers on bare ones (the bare base model answers no mode). The base
    model's readings serve the student's choice, the gate and the serving modes; the student's (its best step's,
    from the early stop), the gate. A reading asked for something it was not read with is read again."""

    def __init__(self, held: HeldOut, tokenizer: Any, config: GeneratorConfig | None = None, *, base: str = "base",
                 progress: bool = False) -> None:
        self.held, self.tokenizer, self.config = held, tokenizer, config or GeneratorConfig()
        self.base, self.progress = base, progress
        self.readings: dict[tuple[str, str], Reading] = {}

    def reading(self, model: Any, who: str, prompts: str, *, answers: bool = False, votes: bool = False) -> Reading:
        if prompts not in ("bare", "with_memory"):
            raise ValueError(f"prompts must be 'bare' or 'with_memory', got {prompts!r}")
        key = (who, prompts)
        have = self.readings.get(key)
        if have is None or (answers and not have.answers) or (votes and not have.votes):
            labels = self.held.metric == "accuracy"
            memory = prompts == "with_memory"
            answers = answers or (labels and (memory or who != self.base))
            votes = votes or (labels and memory and who == self.base)
            self.readings[key] = read_held_out(
                model, self.tokenizer, self.held.with_memory if memory else self.held.bare, self.held.responses,
                answers=answers, votes=self.held.conditioning if votes else None, config=self.config,
                progress=self.progress, desc=f"held-out {who} {prompts}")
        return self.readings[key]

    def __call__(self, model: Any, who: str, prompts: str) -> float:
        return self.reading(model, who, prompts).nll

    def during(self, model: Any, who: str, prompts: str) -> float:
        """The response NLL alone with the weights of a training step (the early stop's measure: no answers)."""
        rows = self.held.with_memory if prompts == "with_memory" else self.held.bare
        self.readings[(who, prompts)] = read_held_out(model, self.tokenizer, rows, self.held.responses,
                                                      progress=self.progress, desc=f"held-out {who} {prompts}")
        return self.readings[(who, prompts)].nll

    def same(self, who: str, as_who: str) -> None:
        """`who`'s readings are `as_who`'s (the same weights: the student ends with its best step's)."""
        for (w, prompts), value in list(self.readings.items()):
            if w == as_who:
                self.readings[(who, prompts)] = value

    def figures(self, model: Any, who: str, modes: Sequence[str]) -> dict[str, float]:
        """Each of `modes`' figure on the slice with `who`'s weights (`model`): accuracy of the answers where they
        are label-like, else the NLL (the vote is not measured under NLL: `auto` generates freely there)."""
        labels = self.held.metric == "accuracy"
        modes = [m for m in modes if labels or m != "vote"]
        kind = {m: "bare" if m == "consolidated" else "with_memory" for m in modes}
        readings = {k: self.reading(model, who, k, answers=labels and any(m != "vote" for m in modes if kind[m] == k),
                                    votes=labels and any(m == "vote" for m in modes if kind[m] == k))
                    for k in set(kind.values())}  # each kind of prompt read once, for every mode it answers
        out = {m: (accuracy(readings[kind[m]].votes if m == "vote" else readings[kind[m]].answers, self.held)
                   if labels else readings[kind[m]].nll) for m in modes}
        logger.info("held-out figures of %s (%s): %s", who, self.held.metric, {m: round(v, 4) for m, v in out.items()})
        return out


def accuracy(answers: Sequence[str], held: HeldOut) -> float:
    """The share of `answers` that match their held-out experience's answer (normalised, non-empty)."""
    return sum(is_correct(o, [e.response]) for o, e in zip(answers, held.experiences)) / max(len(held.experiences), 1)


def answer_width(responses: Sequence[Sequence[int]]) -> int:
    """Greedy answers' token budget on a slice: the longest reference and two more, at most 64."""
    return min(max(len(r) for r in responses) + 2, 64)


@torch.no_grad()
def read_held_out(model: Any, tokenizer: Any, prompts: Sequence[list[int]], responses: Sequence[list[int]], *,
                  answers: bool = False, votes: Sequence[Conditioning] | None = None,
                  config: GeneratorConfig | None = None, progress: bool = False, desc: str = "held-out") -> Reading:
    """Read each prompt once with its reference response (`responses`: token ids, the end token included): the
    mean NLL per response token; with `answers`, the greedy answers (at most `answer_width` tokens); with `votes`
    (each prompt's conditioning), the vote's answers under `config`."""
    if not prompts:
        raise ValueError("no held-out prompts to read")
    config = config or GeneratorConfig()
    width = answer_width(responses)
    eos = _end_tokens(model, tokenizer)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    reading = Reading(0.0)
    try:
        for i in tqdm(range(len(prompts)), desc=desc, disable=not progress):
            prompt, response = prompts[i], responses[i]
            out = model(input_ids=torch.tensor([prompt + response[:-1]], device=model.device), use_cache=True,
                        logits_to_keep=len(response))
            logp = torch.log_softmax(out.logits[0].float(), dim=-1)  # row j predicts response[j]
            target = torch.tensor(response, device=logp.device)
            total -= float(logp.gather(-1, target[:, None]).sum())
            count += len(response)
            cache = out.cache
            if answers:
                tokens = _greedy(model, cache, len(prompt), response, logp.argmax(-1).tolist(), width, eos)
                reading.answers.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
            if votes is not None:
                _cut(cache, len(prompt))
                reading.votes.append(_vote(model, tokenizer, prompt, logp[0], cache, votes[i], config))
    finally:
        model.train(was_training)
    reading.nll = total / max(count, 1)
    return reading


def _end_tokens(model: Any, tokenizer: Any) -> set[int]:
    ends = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ends is None:
        ends = tokenizer.eos_token_id
    return set(ends) if isinstance(ends, list) else ({ends} if ends is not None else set())


def _cut(cache: Any, length: int) -> None:
    """Cut `cache` back to its first `length` tokens."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _greedy(model: Any, cache: Any, start: int, reference: list[int], argmax: list[int], width: int,
            eos: set[int]) -> list[int]:
    """The greedy answer after a prompt of `start` tokens: the teacher-forced argmax tokens while they equal the
    reference, then decoded on from `cache` (cut back to where they part). The end token is not returned."""
    tokens: list[int] = []
    for j, token in enumerate(argmax):
        if token in eos:
            return tokens
        tokens.append(token)
        if len(tokens) >= width:
            return tokens
        if token != reference[j]:
            break
    _cut(cache, start + len(tokens) - 1)
    token = tokens[-1]
    while len(tokens) < width:
        out = model(input_ids=torch.tensor([[token]], device=model.device), cache=cache, use_cache=True)
        token = int(out.logits[0, -1].argmax())
        if token in eos:
            break
        tokens.append(token)
    return tokens


def _vote(model: Any, tokenizer: Any, prompt: list[int], first: torch.Tensor, cache: Any, cond: Conditioning,
          config: GeneratorConfig) -> str:
    """The vote's answer for one prompt, its answers scored from the prompt's cache (`first`: log p of the token
    after the prompt)."""
    if not cond.experiences:
        return ""
    ids = torch.tensor([prompt], device=model.device)
    return vote_among(tokenizer, cond.experiences, config,
                      lambda tokens: answer_logprobs(model, ids, tokens, read=(first, cache))) or ""
