"""Training a LoRA adapter on consolidation pairs: length-bucketed batches, each step's gradients accumulated over
chunks that fit `max_tokens`, the objective (`objectives.py`) plus an optional DPO term on corrected answers."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from logmem.memory import ConfigError
from logmem.memory.vocabulary import StopReason
from tqdm import tqdm

from .config import ConsolidationConfig
from .objectives import consolidation_loss, dpo_loss, sequence_logprobs
from .pairs import Pair
from .progress import Report
from .scoring import response_logits

logger = logging.getLogger(__name__)


def _batches(pairs: Sequence[Pair], size: int, rng: random.Random) -> list[list[Pair]]:
    """Batches of similar length (less padding), in a seeded random order."""
    ordered = sorted(pairs, key=lambda p: len(p.student) + len(p.response))
    batches = [list(ordered[i:i + size]) for i in range(0, len(ordered), size)]
    rng.shuffle(batches)
    return batches


def token_chunks(batch: Sequence[Pair], max_tokens: int) -> list[list[Pair]]:
    """`batch` split, in order, into runs of rows whose padded size (rows x widest row, teacher included)
    stays within `max_tokens`; a row wider than that is a chunk of its own."""
    chunks: list[list[Pair]] = []
    width = 0
    for p in batch:
        w = max(len(p.student), len(p.teacher)) + max(len(p.response), len(p.rejected or []))
        if chunks and (len(chunks[-1]) + 1) * max(width, w) <= max_tokens:
            chunks[-1].append(p)
            width = max(width, w)
        else:
            chunks.append([p])
            width = w
    return chunks


def _preference_loss(peft_model: Any, chunk: Sequence[Pair], student: torch.Tensor, targets: torch.Tensor,
                     config: ConsolidationConfig, pad: int) -> torch.Tensor:
    """DPO over the pairs of `chunk` that carry a rejected answer; `student`/`targets` are the chunk's
    accepted-response logits and tokens (reused as the policy's side of the accepted answers)."""
    lengths = [len(p.response) for p in chunk]
    keep = [i for i, p in enumerate(chunk) if p.rejected is not None]
    prefs = [chunk[i] for i in keep]
    chosen = sequence_logprobs(student, targets, lengths)[keep]
    logits, tokens = response_logits(peft_model, [(p.student, p.rejected or []) for p in prefs], pad)
    rejected = sequence_logprobs(logits, tokens, [len(p.rejected or []) for p in prefs])
    with torch.no_grad(), peft_model.disable_adapter():
        rows = [(p.student, p.response) for p in prefs] + [(p.student, p.rejected or []) for p in prefs]
        logits, tokens = response_logits(peft_model, rows, pad)
        ref = sequence_logprobs(logits, tokens, [len(r) for _, r in rows])
    return dpo_loss(chosen, rejected, ref[: len(prefs)], ref[len(prefs):], config.dpo_beta)


def step_gradients(peft_model: Any, batch: Sequence[Pair], config: ConsolidationConfig, pad: int) -> float:
    """Back-propagate the loss of one step's `batch`, chunk by chunk (`config.max_tokens`); returns the loss.

    Every objective is a mean over response tokens, so a chunk's loss weighs in by its share of the tokens,
    and the DPO term (a mean over preference pairs) by its share of those: the gradients add up to those of
    the whole batch in one pass.
    """
    total = sum(len(p.response) for p in batch)
    prefs = sum(p.rejected is not None for p in batch) if config.dpo_weight else 0
    loss = 0.0
    for chunk in token_chunks(batch, config.max_tokens):
        teacher = None
        if config.method != "sft":
            with torch.no_grad(), peft_model.disable_adapter():
                teacher, _ = response_logits(peft_model, [(p.teacher, p.response) for p in chunk], pad)
        student, targets = response_logits(peft_model, [(p.student, p.response) for p in chunk], pad)
        part = consolidation_loss(config.method, student, targets, teacher, kd_weight=config.kd_weight,
                                  temperature=config.temperature) * (targets.numel() / total)
        share = sum(p.rejected is not None for p in chunk) / prefs if prefs else 0.0
        if share:
            part = part + config.dpo_weight * share * _preference_loss(peft_model, chunk, student, targets,
                                                                        config, pad)
        part.backward()
        loss += part.item()
    return loss


def attach_adapter(model: Any, config: ConsolidationConfig, start: str | Path | None = None) -> Any:
    """`model` (changed in place) with a trainable LoRA adapter: the one saved at `start`, to train on from it,
    or a fresh one (seeded)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if start is not None:
        return PeftModel.from_pretrained(model, str(start), is_trainable=True)
    torch.manual_seed(config.seed)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    modules = [m for m in config.target_modules if m in present]
    if not modules:
        raise ConfigError(f"none of the LoRA target modules {config.target_modules} is in the model")
    return get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                            target_modules=modules, task_type="CAUSAL_LM"))


class _Pace:
    """How long a run's steps and measurements take: what one more step and the measurement after it would cost."""

    def __init__(self) -> None:
        self.steps, self.step_seconds, self.reading = 0, 0.0, 0.0
        self.last_measured = 0  # the last step measured (0: none)

    def stepped(self, seconds: float) -> None:
        self.steps += 1
        self.step_seconds += seconds

    def measured(self, step: int, seconds: float) -> None:
        self.last_measured, self.reading = step, seconds

    def rate(self, base: float, step: int, planned: int, started: float, deadline: float | None,
             cooldown: float) -> float:
        """The learning rate of `step` (1-based) under a `cooldown` over the last share of the run: its planned steps,
        or the time from `started` to `deadline` less the last measurement's (the run's last one), whichever is nearer
        its end."""
        if not cooldown:
            return base
        done = (step - 1) / planned
        if deadline is not None:
            span = deadline - self.reading - started
            done = max(done, (time.perf_counter() - started) / span if span > 0 else 1.0)
        return base * min(1.0, max(0.0, 1.0 - done) / cooldown)

    def ahead(self, measuring: bool) -> float:
        """Seconds for one more step (the mean so far) and, when the run measures, the measurement after it (as
        long as the last one; none yet: nothing)."""
        return self.step_seconds / max(self.steps, 1) + (self.reading if measuring else 0.0)


@dataclass
class Training:
    """How `train_adapter` went: the steps it ran of those planned, why it stopped, the held-out curve, and which
    experiences the weights it ends with were trained on."""

    planned: int  # optimizer steps the epochs planned (capped by max_steps)
    steps: int = 0  # optimizer steps run
    stop: StopReason = "max_steps"  # why it stopped ("max_steps": every planned step ran)
    seconds: float = 0.0  # wall time of the training loop (held-out measurements included)
    best_step: int = 0  # the step whose weights the adapter keeps (0: nothing measured; the last step's are kept)
    best_nll: float | None = None  # the held-out NLL at best_step
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out NLL) of each measurement
    lr_end: float = 0.0  # the learning rate of the last step run (under `cooldown`: how far it fell)
    taught: set[int] = field(default_factory=set)  # experiences with a pair in the steps the kept weights ran (a job
    # that stops early leaves the rest to the next one)

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "steps_planned": self.planned, "stop": self.stop,
                "train_seconds": round(self.seconds, 1), "best_step": self.best_step, "best_nll": self.best_nll,
                "curve": [[s, round(v, 5)] for s, v in self.curve], "lr_end": self.lr_end}


class WeightAverage:
    """An exponential moving average of the adapter's trainable weights over the run's steps (`decay` per step,
    begun at the first step's weights): what the run measures and ends with. At a constant learning rate the
    weights of one step bounce around the minimum they approach (NFCats' held-out NLL at steps 20, 25 and 30 read
    0.077, 0.045 and 0.081); their average can sit nearer to it (Polyak and Juditsky 1992; over the last checkpoints,
    LAWA: Kaddour 2022, Sanyal et al. 2023), for a copy of the adapter's weights (a few MB) per step. In the 760 s
    jobs on 2 CPU cores it did not (0.8 held out worse on both tenants: benchmarks/results/job_time.md), so it is
    off by default (`ConsolidationConfig.average`)."""

    def __init__(self, model: Any, decay: float) -> None:
        self.decay = decay
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.mean: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def update(self) -> None:
        """Take in the weights of the step just run."""
        if self.mean is None:
            self.mean = {n: p.detach().clone() for n, p in self.params}
            return
        for n, p in self.params:
            self.mean[n].mul_(self.decay).add_(p.detach(), alpha=1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model for the block, the step's own back after it (training goes on)."""
        with torch.no_grad():
            own = {n: p.detach().clone() for n, p in self.params}
        self.apply()
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params:
                    p.copy_(own[n])

    @torch.no_grad()
    def apply(self) -> None:
        """The averaged weights into the model (none yet: left as they are)."""
        if self.mean is None:
            return
        for n, p in self.params:
            p.copy_(self.mean[n])


class EarlyStop:
    """Early stopping on the held-out NLL: each measurement below the best so far keeps its weights (the
    adapter's trainable tensors, copied); `patience` measurements in a row that gain less than `min_gain` nats
    on the best stop the run ("patience"), and so does a best under `min_gain` itself ("converged": no gain of
    `min_gain` is left to make)."""

    def __init__(self, config: ConsolidationConfig) -> None:
        self.patience, self.min_gain = config.patience, config.min_gain
        self.best, self.best_step, self.misses = math.inf, 0, 0
        self.weights: dict[str, torch.Tensor] | None = None

    def record(self, model: Any, step: int, nll: float) -> StopReason | None:
        """Take the held-out NLL measured after `step`; returns the reason to stop now, or None."""
        gained = self.best - nll
        if nll < self.best:
            self.best, self.best_step = nll, step
            self.weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.misses = 0 if gained >= self.min_gain else self.misses + 1
        if self.best <= self.min_gain:
            return "converged"
        if self.patience and self.misses >= self.patience:
            return "patience"
        return None

    @torch.no_grad()
    def restore(self, model: Any) -> None:
        """Put the best measurement's weights back into `model`."""
        if self.weights is None:
            return
        for name, p in model.named_parameters():
            if name in self.weights:
                p.copy_(self.weights[name])


def train_adapter(model: Any, tokenizer: Any, pairs: Sequence[Pair], config: ConsolidationConfig,
                  report: Report | None = None, progress: bool = False, *,
                  held_out: Callable[[Any, int], float] | None = None,
                  deadline: float | None = None) -> tuple[Any, Training]:
    """Train `model`'s LoRA adapter on `pairs` (a plain model gets a fresh one first); returns the peft model and
    how the run went.

    With `config.average`, the weights measured, kept and ended with are the moving average of the steps' weights
    (`WeightAverage`). With `held_out(peft_model, step)` (the held-out NLL of the weights after `step`), the run
    measures it every
    `config.eval_every` steps from `config.min_steps` on and after its last step, stops early (`EarlyStop`) and
    ends with the best measurement's weights. With a `deadline` (a `time.perf_counter()` value; default:
    `config.max_seconds` from now, when set) it runs a step only where, at the pace of its steps and measurements
    so far, that step and the measurement after it end by then; the first step always runs.
    """
    from peft import PeftModel

    started = time.perf_counter()
    if deadline is None and config.max_seconds:
        deadline = started + config.max_seconds
    peft_model = model if isinstance(model, PeftModel) else attach_adapter(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    base = learning_rate(config)
    optimizer = torch.optim.AdamW(params, lr=base, weight_decay=0.0)
    rng = random.Random(config.seed)
    plan = [b for _ in range(config.epochs) for b in _batches(pairs, config.batch_size, rng)]
    if config.max_steps:
        plan = plan[: config.max_steps]
    pad = tokenizer.pad_token_id
    run, early = Training(planned=len(plan)), EarlyStop(config)
    average = WeightAverage(peft_model, config.average) if config.average else None
    pace = _Pace()
    peft_model.train()

    def measure(step: int) -> str:
        """Measure the weights after `step`; returns the note for the progress report."""
        assert held_out is not None
        began = time.perf_counter()
        with average.applied() if average is not None else nullcontext():
            nll = held_out(peft_model, step)
            stop = early.record(peft_model, step, nll)
        pace.measured(step, time.perf_counter() - began)
        run.curve.append((step, nll))
        if stop is not None:
            run.stop = stop
        return f" held-out {nll:.4f}"

    bar = tqdm(plan, desc=f"consolidate ({config.method})", unit="step", disable=not progress)
    for step, batch in enumerate(bar, start=1):
        if step > 1 and deadline is not None and time.perf_counter() + pace.ahead(held_out is not None) > deadline:
            run.stop = "wall_time"
            break
        began = time.perf_counter()
        run.lr_end = pace.rate(base, step, len(plan), started, deadline, config.cooldown)
        for group in optimizer.param_groups:
            group["lr"] = run.lr_end
        optimizer.zero_grad(set_to_none=True)
        loss = step_gradients(peft_model, batch, config, pad)
        optimizer.step()
        if average is not None:
            average.update()
        pace.stepped(time.perf_counter() - began)
        run.steps = step
        note = ""
        if held_out is not None and (step == len(plan) or (config.eval_every and step % config.eval_every == 0
                                                           and step >= config.min_steps)):
            note = measure(step)
        bar.set_postfix(loss=f"{loss:.3f}")
        if report is not None:
            report(step / len(plan), f"step {step}/{len(plan)} loss {loss:.4f}{note}")
        if run.stop != "max_steps":
            break
    if held_out is not None and pace.last_measured != run.steps:  # stopped by the clock between measurements
        measure(run.steps)
        run.stop = "wall_time"
    bar.close()
    if average is not None:
        average.apply()  # the run ends with the average (the best measured one, when measured: restored below)
    if early.best_step and (early.best_step != run.steps or average is not None):
        early.restore(peft_model)
        if early.best_step != run.steps:
            logger.info("kept the weights of step %d (held-out NLL %.4f), not those of step %d", early.best_step,
                        early.best, run.steps)
    run.best_step, run.best_nll = early.best_step, (early.best if early.best_step else None)
    run.taught = {p.experience_id for batch in plan[: run.best_step or run.steps] for p in batch}
    run.seconds = time.perf_counter() - started
    logger.info("trained %d of %d planned steps in %.1f s: stopped by %s", run.steps, run.planned, run.seconds,
                run.stop)
    peft_model.eval()
    return peft_model, run


def learning_rate(config: ConsolidationConfig) -> float:
    """`config.lr`, or by default 5e-4 for the memory+adapter student and 2.5e-4 for the bare one."""
    if config.lr is not None:
        return config.lr
    return 5e-4 if config.with_memory else 2.5e-4
