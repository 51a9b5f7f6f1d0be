"""Consolidation objectives: pure functions of logits, each checked on exact values in the tests.

Shapes: `N` response tokens (already gathered from their sequences), `V` vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from logmem.memory.vocabulary import METHODS


def sft_loss(student: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the accepted response: mean over tokens of -log p_student(target).

    Args:
        student: float (N, V) logits that predict each response token.
        targets: int64 (N,) the response tokens.
    """
    if student.shape[0] == 0:
        return student.sum() * 0.0
    return F.cross_entropy(student.float(), targets)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Context distillation: mean over tokens of KL(p_teacher || p_student) at `temperature`, times T^2
    (so gradients keep their scale across temperatures, as in Hinton et al. 2015).

    Args:
        student: float (N, V) logits of the student (no memory in its prompt).
        teacher: float (N, V) logits of the teacher (the base model with the memory in its prompt).
    """
    if student.shape != teacher.shape:
        raise ValueError("student and teacher logits differ in shape: "
                         f"{tuple(student.shape)} vs {tuple(teacher.shape)}")
    if student.shape[0] == 0:
        return student.sum() * 0.0
    t = float(temperature)
    log_p_s = F.log_softmax(student.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher.float() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
    return kl.mean() * t * t


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(B,) log-probability of each row's whole response: rows of `lengths` tokens laid end to end in
    `logits` (N, V) and `targets` (N,), as `response_logits` returns them."""
    token = F.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None])[:, 0]
    rows = torch.repeat_interleave(torch.arange(len(lengths), device=token.device),
                                   torch.tensor(lengths, device=token.device))
    return torch.zeros(len(lengths), device=token.device, dtype=token.dtype).index_add(0, rows, token)


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Direct preference optimisation (Rafailov et al. 2023): mean over pairs of
    -log sigmoid(beta * ((log pi(accepted) - log ref(accepted)) - (log pi(rejected) - log ref(rejected)))).

    Args: (B,) sequence log-probabilities (`sequence_logprobs`) of the accepted and the rejected answer
    under the student (`chosen`, `rejected`) and the reference, the base model (`ref_*`).
    """
    if chosen.shape[0] == 0:
        return chosen.sum() * 0.0
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def consolidation_loss(method: str, student: torch.Tensor, targets: torch.Tensor,
                       teacher: torch.Tensor | None = None, *, kd_weight: float = 0.5,
                       temperature: float = 1.0) -> torch.Tensor:
    """`sft`, `kd`, or `sft+kd` = (1 - kd_weight) * sft + kd_weight * kd."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "sft":
        return sft_loss(student, targets)
    if teacher is None:
        raise ValueError(f"method {method!r} needs the teacher's logits")
    kd = kd_loss(student, teacher, temperature)
    if method == "kd":
        return kd
    return (1.0 - kd_weight) * sft_loss(student, targets) + kd_weight * kd
