"""Training a LoRA adapter on consolidation pairs: length-bucketed batches, each step's gradients accumulated over
chunks that fit `max_tokens`, the objective (`objectives.py`) plus an optional DPO term on corrected answers."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from logmem.memory import ConfigError
from tqdm import tqdm

from .config import ConsolidationConfig
from .objectives import consolidation_loss, dpo_loss, sequence_logprobs
from .pairs import Pair
from .progress import Report
from .scoring import response_logits


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


def train_adapter(model: Any, tokenizer: Any, pairs: Sequence[Pair], config: ConsolidationConfig,
                  report: Report | None = None, progress: bool = False) -> Any:
    """Train `model`'s LoRA adapter on `pairs` (a plain model gets a fresh one first); returns the peft model."""
    from peft import PeftModel

    peft_model = model if isinstance(model, PeftModel) else attach_adapter(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate(config), weight_decay=0.0)
    rng = random.Random(config.seed)
    plan = [b for _ in range(config.epochs) for b in _batches(pairs, config.batch_size, rng)]
    if config.max_steps:
        plan = plan[: config.max_steps]
    pad = tokenizer.pad_token_id
    peft_model.train()
    bar = tqdm(plan, desc=f"consolidate ({config.method})", unit="step", disable=not progress)
    for step, batch in enumerate(bar, start=1):
        optimizer.zero_grad(set_to_none=True)
        loss = step_gradients(peft_model, batch, config, pad)
        optimizer.step()
        bar.set_postfix(loss=f"{loss:.3f}")
        if report is not None:
            report(step / len(plan), f"step {step}/{len(plan)} loss {loss:.4f}")
    peft_model.eval()
    return peft_model


def learning_rate(config: ConsolidationConfig) -> float:
    """`config.lr`, or by default 5e-4 for a bare student and 2.5e-4 for a memory+adapter one."""
    if config.lr is not None:
        return config.lr
    return 2.5e-4 if config.with_memory else 5e-4
