"""Consolidation objectives on exact values."""

from __future__ import annotations

import math

import pytest
import torch
from logmem.model.objectives import consolidation_loss, dpo_loss, kd_loss, sequence_logprobs, sft_loss


def test_sft_is_the_mean_negative_log_likelihood() -> None:
    student = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # p = (1/2, 1/2), (3/4, 1/4)
    targets = torch.tensor([0, 1])
    want = -(math.log(0.5) + math.log(0.25)) / 2
    assert sft_loss(student, targets).item() == pytest.approx(want, rel=1e-6)


def test_kd_is_zero_for_identical_logits_and_kl_otherwise() -> None:
    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=rng)
    assert kd_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.tensor([[0.0, 0.0]])  # (1/2, 1/2)
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # (3/4, 1/4)
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(student, teacher).item() == pytest.approx(want, rel=1e-6)


def test_kd_temperature_softens_and_rescales() -> None:
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[2.0 * math.log(3.0), 0.0]])  # at T=2 the teacher is (3/4, 1/4)
    want = (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) * 4.0
    assert kd_loss(student, teacher, temperature=2.0).item() == pytest.approx(want, rel=1e-6)


def test_kd_is_not_symmetric() -> None:
    a, b = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    assert kd_loss(a, b).item() != pytest.approx(kd_loss(b, a).item())


def test_combined_is_the_weighted_sum() -> None:
    rng = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 6, generator=rng), torch.randn(4, 6, generator=rng)
    y = torch.tensor([0, 5, 2, 3])
    want = 0.7 * sft_loss(s, y) + 0.3 * kd_loss(s, t, 2.0)
    got = consolidation_loss("sft+kd", s, y, t, kd_weight=0.3, temperature=2.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert consolidation_loss("sft", s, y).item() == pytest.approx(sft_loss(s, y).item())
    assert consolidation_loss("kd", s, y, t).item() == pytest.approx(kd_loss(s, t).item())


def test_errors_name_the_problem() -> None:
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown method 'dpo'"):
        consolidation_loss("dpo", s, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="needs the teacher"):
        consolidation_loss("kd", s, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(s, torch.zeros(2, 4))


def test_empty_response_gives_zero_with_a_gradient() -> None:
    s = torch.zeros(0, 3, requires_grad=True)
    loss = consolidation_loss("sft+kd", s, torch.zeros(0, dtype=torch.long), torch.zeros(0, 3))
    loss.backward()
    assert loss.item() == 0.0 and s.grad is not None


def test_sequence_logprobs_sum_each_rows_tokens() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [0.0, 0.0]])  # (1/2, 1/2), (3/4, 1/4), (1/2, 1/2)
    got = sequence_logprobs(logits, torch.tensor([0, 1, 1]), [2, 1])
    assert got.tolist() == pytest.approx([math.log(0.5) + math.log(0.25), math.log(0.5)], rel=1e-6)


def test_dpo_on_exact_values() -> None:
    same = torch.tensor([-1.0, -3.0])
    assert dpo_loss(same, same - 1.0, same, same - 1.0).item() == pytest.approx(math.log(2.0), rel=1e-6)
    # the student raised the accepted answer by 0.5 nats and lowered the rejected one by 0.5 vs the base
    chosen, rejected, ref = torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5])
    want = math.log1p(math.exp(-0.1 * 1.0))
    assert dpo_loss(chosen, rejected, ref, ref, beta=0.1).item() == pytest.approx(want, rel=1e-6)
    assert dpo_loss(rejected, chosen, ref, ref, beta=0.1).item() == pytest.approx(math.log1p(math.exp(0.1)), rel=1e-6)
    assert dpo_loss(chosen, rejected, ref, ref, beta=1.0).item() < want  # a larger beta trusts the margin more
