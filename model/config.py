"""The model package's configs, checked at construction and free of torch (an API validates a job's parameters by
constructing one): the generator's (what memory goes into the prompt, and how much) and consolidation's."""

from __future__ import annotations

from dataclasses import dataclass

from logmem.memory.config import check_fields
from logmem.memory.vocabulary import CHOOSE_VALUES, METHODS


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
    focus_margin: float | None = 0.1  # free generation where the tenant's answers do not repeat (free text): an
    # experience whose score trails the best one's by more than this stays out of the prompt, so a dominating hit
    # conditions alone and the model does not copy a neighbouring fact (None: every hit that fits the budgets)
    fact_note: bool = True  # ... and the answers of the hits it keeps are stated in a note too
    fact_place: str = "question"  # where that note goes: "question", after the question in its own turn (on
    # the free-text set the bundled model's answers held the fact for 0.94 of the questions whose right experience
    # came first, against 0.82 with the note in the system turn: benchmarks/results/freetext.md); "system": the
    # system note, with the lessons
    reuse: bool = True  # free generation on a free-text tenant: a request whose best hit leads every other answer by
    # the tenant's calibrated margin is answered with that hit's answer verbatim (model/reuse.py), no model run
    reuse_risk: float = 0.02  # the margin is the smallest at which held-out requests get another answer by reuse at
    # most this often
    reuse_held_out: int = 200  # held-out experiences the margin is calibrated on (under 20: reuse stays off)
    reuse_min_cos: float = 0.5  # ... and the best hit must be this near the request (cosine)
    reuse_min_utility: float = 0.6  # ... and its utility confirmed (one like: 2/3; unjudged: 1/2)

    threads: int = 0  # torch threads a generation runs on, set in the thread that generates (model/threads.py); 0:
    # auto, the cores less one (at least one): on 2 cores one thread, as fast in the caller's thread as in a fresh one

    def __post_init__(self) -> None:
        checks = [
            ("k", self.k >= 0, ">= 0"),
            ("threads", self.threads >= 0, ">= 0 (0: auto)"),
            ("memory_token_budget", self.memory_token_budget >= 0, ">= 0"),
            ("lesson_token_budget", self.lesson_token_budget >= 0, ">= 0"),
            ("choose", self.choose in CHOOSE_VALUES, f"one of {', '.join(CHOOSE_VALUES)}"),
            ("auto_repetition", 0 <= self.auto_repetition <= 1, "in [0, 1]"),
            ("vote_prior", self.vote_prior >= 0, ">= 0"),
            ("vote_max_tokens", self.vote_max_tokens >= 1, ">= 1"),
            ("order", self.order in ("score", "answer"), "'score' or 'answer'"),
            ("calibrate", self.constrain or not self.calibrate,
             "False unless constrain=True (it scores those answers)"),
            ("calibrate_warmup", self.calibrate_warmup >= 0, ">= 0"),
            ("focus_margin", self.focus_margin is None or self.focus_margin >= 0.0, ">= 0 (or None)"),
            ("fact_place", self.fact_place in ("question", "system"), "'question' or 'system'"),
            ("reuse_risk", 0.0 <= self.reuse_risk < 1.0, "in [0, 1)"),
            ("reuse_held_out", self.reuse_held_out >= 0, ">= 0"),
            ("reuse_min_cos", -1.0 <= self.reuse_min_cos <= 1.0, "in [-1, 1]"),
            ("reuse_min_utility", 0.0 <= self.reuse_min_utility <= 1.0, "in [0, 1]"),
        ]
        check_fields(self, checks)


@dataclass(frozen=True)
class ConsolidationConfig:
    """What to consolidate and how; checked at construction."""

    method: str = "sft"  # sft | kd | sft+kd (objectives.py); sft has the lowest held-out NLL on NFCats (README)
    with_memory: bool | None = None  # True trains the memory+adapter student (experiences stay in its prompt),
    # False the bare one; None: the job chooses (`choose_student`): the active adapter's kind, or with memory where
    # the retrieved experiences lower the base model's held-out response NLL by more than gate_margin
    min_utility: float = 0.6  # experiences under this utility are not taught
    min_support: int = 1  # ... nor those supported by fewer interactions
    holdout: float = 0.1  # share of the selected experiences kept out of training, for the gate
    max_holdout: int = 64  # at most this many: every mode the gate measures reads each one (on 2 CPU cores one pass
    # over 132 NFCats prompts with memory took ~2 min, and a job makes several: 200 left a 15-minute job no time to
    # train; an earlier benchmarks/results/job_time.md, before the single reading)
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scale numerator
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    lr: float | None = None  # AdamW learning rate; None: 5e-4 for the memory+adapter student, 2.5e-4 for the bare one
    # (at `batch_size` 8; at 16 they were 1e-3 and 5e-4, halved with the batch. On NFCats at batch 8, 1e-3 held out
    # 0.043 at step 60 but took the probe perplexity up 21%, over the gate's 15%; 5e-4, 0.035 and +7.3%. At batch 16:
    # 1e-3 0.045 at step 25, 5e-4 0.062; a linear decay to the time bound 0.078: benchmarks/results/job_time.md)
    epochs: int = 1  # passes over the training pairs
    max_steps: int = 0  # stop after this many optimizer steps (0: no cap)
    eval_every: int = 10  # measure the held-out NLL every this many steps (and after the last): the job keeps the
    # best measurement's weights, and stops early by `patience` (0: only after the last step, no early stop). Each
    # measurement reads the held-out prompts once, for their NLL alone (~40 s for NFCats' 64 on 2 CPU cores, a
    # step of 8 pairs ~8 s): every 80 pairs
    min_steps: int = 50  # the measurements every eval_every steps (and so the early stop) begin at this step (the
    # 400th pair): a job planned for fewer steps runs them all and is measured once, after its last (a few steps'
    # held-out NLL on a small slice is noise, and a short job has little time to save). On 2 CPU cores a measurement
    # costs ~57 s, ~6 steps, and none before step 50 stopped a job on NFCats or the 6-label support tenant; begun
    # at 50 rather than 40, a 760 s job on a slow day ran 56 steps instead of 50 (NFCats: 0.0495 against 0.0649)
    # and 62 instead of 51 (support: 0.0364 against 0.0435): benchmarks/results/job_time.md
    patience: int = 2  # stop after this many measurements in a row that gain less than `min_gain` on the best
    # (0: never stop early); a best NLL under `min_gain` itself stops at once (converged: no such gain is left)
    min_gain: float = 0.005  # nats per response token a measurement must gain on the best to reset the patience
    max_seconds: float = 760.0  # the job's training, with its last measurement, ends by this many seconds since the
    # job started (0: no bound): a step runs only where, at the pace of the steps and measurements so far, it and the
    # measurement after it end in time; the best measured weights are kept, and the student's readings and the gate
    # after it add ~2 minutes (NFCats). What it did not reach stays uncovered, and the next job teaches it. On 2 CPU
    # cores a job's training outlasts its early stop: NFCats' default job stopped by patience after 19.9 min and the
    # 6-label support tenant's was still gaining at 16 min (benchmarks/results/job_time.md); 760 s holds a job to
    # ~15 minutes
    average: float = 0.0  # a decay in (0, 1): the run measures, keeps and ends with the moving average of its steps'
    # weights (model/training.py, WeightAverage; 0.8: a window of ~5 steps). Off: in 760 s jobs on 2 CPU cores 0.8
    # held out worse on NFCats (0.057 against 0.045 at step 25) and the support tenant (0.043 against 0.041):
    # benchmarks/results/job_time.md
    cooldown: float = 0.0  # the last share of a run over which the learning rate falls linearly to 0 (0: constant):
    # of its planned steps, or of its time bound (less its last measurement), whichever it is nearer the end of. At a
    # constant rate the held-out NLL of NFCats' steps 40, 50 and 60 read 0.065, 0.068 and 0.035; a run that anneals
    # at its end lands nearer the minimum it circles (the warmup-stable-decay schedule: Hu et al. 2024, Hagele et al.
    # 2024)
    batch_size: int = 8  # pairs per step, batched by length (8: twice the updates of 16 in a job's time: 60 steps
    # in 760 s where 16 ran 25-30, and a lower held-out NLL on both tenants of benchmarks/results/job_time.md)
    max_tokens: int = 4096  # (padded) tokens per forward pass: a longer step is split into chunks whose
    # gradients add up to the whole step's (same update, less memory: 16 prompts of ~770 tokens took ~23 GB)
    max_length: int = 1024  # tokens per pair (prompt + response), prompts cut from the left (a warning says how
    # many): NFCats' bare prompts are ~40-100 tokens, its prompts with 8 experiences ~355 (median) to ~770 (max)
    kd_weight: float = 0.5  # share of kd in sft+kd
    temperature: float = 1.0  # distillation temperature
    dpo_weight: float = 0.0  # weight of a DPO term on experiences with a rejected answer (corrections); 0: off
    dpo_beta: float = 0.1  # DPO's beta: how far from the base model the preference may pull
    teacher_k: int = 8  # experiences in the teacher's prompt (and the held-out prompts the gate reads, as served)
    student_k: int = 4  # experiences in the memory+adapter student's training prompts, the best of the teacher's
    # (0: all teacher_k): served with teacher_k, it learns as well from fewer, and a step of NFCats' shorter prompts
    # (~220 tokens against ~377) took 14 s against 23 on 2 cores
    gate_reference: str = "served"  # "served": promote only if a mode the adapter enables beats what the tenant
    # is served now (its mode, with its active adapter if any) on the held-out slice (model/modes.py); "base": only
    # if its held-out response NLL beats the bare base model's (a reference nearly any adapter beats)
    gate_margin: float = 0.02  # held-out response NLL must drop by this fraction (nll figures, and under "base")
    accuracy_margin: float = 0.0  # held-out accuracy must rise by more than this (label-like answers)
    probe_bound: float = 0.15  # ... and general-text perplexity may rise by at most this fraction: adapters that
    # answered their tenant better rose 0.6% to 9.9% (NFCats 4.1% and 6.3%, a 6-label task's 9.9%), one that
    # collapses general text more than doubles it; the held-out comparison, not this bound, guards the answers
    seed: int = 0
    rebuild: bool = False  # retrain from the base over every experience left (after forgetting), a new lineage
    # Accumulation (model/lineage.py; chosen on the NFCats drift benchmark, README):
    start: str = "active"  # "active": train on from the tenant's active adapter; "base": a fresh LoRA each job
    replay: float = 1.0  # covered experiences taught again per new training experience (0: none)
    replay_min: int = 32  # ... at least this many (when the lineage covers that many)
    replay_max: int = 512  # ... at most: a job's steps grow with new + replay, not with all ever consolidated
    forget_bound: float = 0.25  # an earlier held-out slice's NLL may rise by this fraction over the active adapter's
    forget_slack: float = 0.05  # ... plus this many nats (a near-zero NLL wobbles by more than any fraction)
    forget_max: int = 256  # earlier adapters' held-out experiences measured per job, shared evenly by their slices
    # The serving choice over every live held-out slice of the lineage (model/slices.py):
    serve_bound: float = 0.05  # an earlier slice's served figure may fall by this fraction (accuracy down, NLL up)
    # unless the tenant's combined figure rises (the drift benchmark asks an old topic to keep >= 95%)
    serve_traffic: int = 1000  # the tenant's latest-used experiences whose nearest slices weigh the slices
    # A promoted adapter first serves this share of the tenant's conversations as its canary, until the users'
    # outcomes promote or roll it back (memory/canary.py; 0: off, promoted adapters serve everyone at once)
    canary_share: float = 0.0

    def __post_init__(self) -> None:
        checks = [
            ("method", self.method in METHODS, f"one of {', '.join(METHODS)}"),
            ("min_utility", 0.0 <= self.min_utility <= 1.0, "in [0, 1]"),
            ("holdout", 0.0 < self.holdout < 1.0, "in (0, 1)"),
            ("lora_r", self.lora_r >= 1, ">= 1"),
            ("student_k", self.student_k >= 0, ">= 0 (0: teacher_k)"),
            ("lr", self.lr is None or self.lr >= 0.0, ">= 0 (or None)"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("max_steps", self.max_steps >= 0, ">= 0"),
            ("eval_every", self.eval_every >= 0, ">= 0"),
            ("min_steps", self.min_steps >= 0, ">= 0"),
            ("patience", self.patience >= 0, ">= 0"),
            ("min_gain", self.min_gain >= 0.0, ">= 0"),
            ("max_seconds", self.max_seconds >= 0.0, ">= 0 (0: no bound)"),
            ("average", 0.0 <= self.average < 1.0, "in [0, 1) (0: no average)"),
            ("cooldown", 0.0 <= self.cooldown <= 1.0, "in [0, 1] (0: a constant rate)"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("max_length", self.max_length >= 8, ">= 8"),
            ("max_tokens", self.max_tokens >= 1, ">= 1"),
            ("kd_weight", 0.0 <= self.kd_weight <= 1.0, "in [0, 1]"),
            ("temperature", self.temperature > 0, "> 0"),
            ("dpo_weight", self.dpo_weight >= 0.0, ">= 0"),
            ("dpo_beta", self.dpo_beta > 0, "> 0"),
            ("start", self.start in ("active", "base"), "'active' or 'base'"),
            ("gate_reference", self.gate_reference in ("served", "base"), "'served' or 'base'"),
            ("accuracy_margin", 0.0 <= self.accuracy_margin < 1.0, "in [0, 1)"),
            ("probe_bound", self.probe_bound >= 0.0, ">= 0"),
            ("replay", self.replay >= 0.0, ">= 0"),
            ("replay_min", self.replay_min >= 0, ">= 0"),
            ("replay_max", self.replay_max >= self.replay_min, f">= replay_min ({self.replay_min})"),
            ("forget_bound", self.forget_bound >= 0.0, ">= 0"),
            ("forget_slack", self.forget_slack >= 0.0, ">= 0"),
            ("forget_max", self.forget_max >= 1, ">= 1"),
            ("serve_bound", self.serve_bound >= 0.0, ">= 0"),
            ("serve_traffic", self.serve_traffic >= 1, ">= 1"),
            ("canary_share", 0.0 <= self.canary_share < 1.0, "in [0, 1) (0: no canary)"),
        ]
        check_fields(self, checks)
