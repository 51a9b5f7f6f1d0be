"""Configuration of the generator: what memory goes into the prompt, and how much."""

from __future__ import annotations

from dataclasses import dataclass

from logmem.memory.config import check_fields

CHOICES = ("default", "off", "vote", "auto")


@dataclass(frozen=True)
class GeneratorConfig:
    """How `MemoryGenerator` conditions the wrapped model on the memory, checked at construction."""

    k: int = 8  # experiences retrieved per request
    template: str = "exchanges"  # a file in model/templates/ (without .jinja), or a path to one
    memory_token_budget: int = 768  # at most this many prompt tokens are spent on experiences
    lesson_token_budget: int = 128  # ... and this many on lessons from corrections
    min_score: float = -1e9  # experiences under this combined score stay out of the prompt
    choose: str = "default"  # "default": the tenant's serving mode (model/modes.py: what its consolidation jobs
    # measured best, or an operator pinned; before any, "auto"); "off": free generation with memory; "vote": answer
    # with a memory-supported answer (voting.py); "auto": vote where the tenant's answers repeat (labels, routes),
    # generate freely where they do not
    auto_repetition: float = 0.5  # "auto" votes when at least this share of experiences repeat another's answer
    # (NFCats' 8 labels over 1,322 experiences: 0.99; free-text answers: ~0)
    vote_prior: float = 4.0  # weight of log(vote share) against the model under "vote" (tuned on NFCats dev)
    vote_max_tokens: int = 24  # answers longer than this are never chosen among, only generated
    order: str = "score"  # exchanges in the prompt: "score" best last; "answer" grouped by answer, the answer with
    # the most retrieval score last (nearest the question)
    answer_note: bool = False  # where the experiences' answers repeat, a note says how often each was given
    constrain: bool = False  # free generation, where the tenant's answers repeat, kept to the (short) answers the
    # retrieved experiences gave: the model picks among them token by token, with no vote prior
    calibrate: bool = False  # under `constrain`, the model scores each of those answers whole (log p(answer, end)
    # reading the prompt) less its own running mean preference for that answer over the tenant's earlier requests
    # (a 135M model favours a few labels whatever it reads: its label bias, measured from its own scores, no
    # references, no vote prior), and the best-scored answer is given
    calibrate_warmup: int = 64  # under `calibrate`, before a tenant's first calibrated answer, its preference is
    # measured on this many of its stored experiences (each asked with its neighbours, itself left out), so the
    # first requests are not answered with no estimate (0: learn it from requests only)

    def __post_init__(self) -> None:
        checks = [
            ("k", self.k >= 0, ">= 0"),
            ("memory_token_budget", self.memory_token_budget >= 0, ">= 0"),
            ("lesson_token_budget", self.lesson_token_budget >= 0, ">= 0"),
            ("choose", self.choose in CHOICES, "'default', 'off', 'vote' or 'auto'"),
            ("auto_repetition", 0 <= self.auto_repetition <= 1, "in [0, 1]"),
            ("vote_prior", self.vote_prior >= 0, ">= 0"),
            ("vote_max_tokens", self.vote_max_tokens >= 1, ">= 1"),
            ("order", self.order in ("score", "answer"), "'score' or 'answer'"),
            ("calibrate", self.constrain or not self.calibrate,
             "False unless constrain=True (it scores those answers)"),
            ("calibrate_warmup", self.calibrate_warmup >= 0, ">= 0"),
        ]
        check_fields(self, checks)
