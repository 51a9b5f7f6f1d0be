"""One reading of each held-out prompt gives what separate passes gave: the NLL of a batched pass, the answers
of `generate`'s greedy decoding (where they agree with the reference, where they part at once, where they part
later), and the vote's choice."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from logmem.memory import Hit
from logmem.model import reading
from logmem.model.config import GeneratorConfig
from logmem.model.modes import measure
from logmem.model.prompting import Conditioning, chat_ids
from logmem.model.reading import HeldOut, answer_width, read_held_out
from logmem.model.scoring import nll_per_token
from logmem.model.voting import choose_answer

QUESTIONS = ["What is the capital of France? Answer with one word.", "Is the sky green? Answer yes or no.",
             "What is the opposite of hot? One word."]


def _hit(answer: str, score: float) -> Hit:
    return Hit(id=1, score=score, sim=score, util=0.0, rec=0.0, cos=score, utility=0.5, trigger="q", response=answer,
               lesson=None, rejected=None, support=1, tenant="default")


def _generate(model: Any, prompt: list[int], width: int, tok: Any) -> str:
    out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=width, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, len(prompt):], skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def rows(smollm: Any) -> tuple[list[list[int]], list[list[int]]]:
    """Each question thrice: with the model's own greedy answer as the reference (they agree to the end), a
    reference that parts from it at its first token, and one that parts after its first token."""
    model, tok = smollm
    eos = tok.eos_token_id
    prompts, responses = [], []
    for q in QUESTIONS:
        prompt = chat_ids(tok, [{"role": "user", "content": q}])
        own = tok(_generate(model, prompt, 6, tok), add_special_tokens=False)["input_ids"]
        wrong = tok(" zebra crossing", add_special_tokens=False)["input_ids"]
        prompts += [prompt] * 3
        responses += [own + [eos], [t for t in wrong if t != own[0]] + [eos], own[:1] + wrong + [eos]]
    return prompts, responses


def test_the_reading_gives_the_batched_nll_and_generates_greedy_answers(smollm: Any, rows: Any) -> None:
    model, tok = smollm
    prompts, responses = rows
    reading = read_held_out(model, tok, prompts, responses, answers=True)
    assert reading.nll == pytest.approx(nll_per_token(model, list(zip(prompts, responses)), tok.pad_token_id), rel=1e-4)
    width = answer_width(responses)
    assert reading.answers == [_generate(model, p, width, tok) for p in prompts]
    # the references that are the model's own first tokens: its answers go on from them
    assert all(a.startswith(tok.decode(r[:-1]).strip()) for a, r in zip(reading.answers[::3], responses[::3]))
    assert all(a != tok.decode(r[:-1]).strip() for a, r in zip(reading.answers[1::3], responses[1::3]))
    assert not reading.votes and not read_held_out(model, tok, prompts, responses).answers  # only what is asked


def test_the_reading_votes_as_the_vote_does(smollm: Any, rows: Any) -> None:
    model, tok = smollm
    prompts, responses = rows
    conds = [Conditioning([_hit("Paris", 0.9), _hit("London", 0.5), _hit("yes", 0.4), _hit("four", 0.3)], [], 0)
             for _ in prompts]
    conds[1] = Conditioning([], [], 0)  # no experience: no vote
    for config in (GeneratorConfig(vote_prior=0.0), GeneratorConfig(), replace(GeneratorConfig(), vote_max_tokens=1)):
        reading = read_held_out(model, tok, prompts, responses, answers=True, votes=conds, config=config)
        want = [(choose_answer(model, tok, torch.tensor([p]), c.experiences, config) or "") if c.experiences else ""
                for p, c in zip(prompts, conds)]
        assert reading.votes == want
        assert reading.answers == read_held_out(model, tok, prompts, responses, answers=True).answers
    assert len(set(read_held_out(model, tok, prompts, responses, votes=conds,
                                 config=GeneratorConfig(vote_prior=0.0)).votes)) > 1  # the model's scores decide


def test_an_empty_slice_is_an_error(smollm: Any) -> None:
    with pytest.raises(ValueError, match="no held-out prompts"):
        read_held_out(smollm[0], smollm[1], [], [])


def test_a_job_reads_each_kind_of_prompt_once_for_every_mode_it_answers(smollm: Any, rows: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = smollm
    prompts, responses = rows
    conds = [Conditioning([_hit("Paris", 0.9), _hit("no", 0.5)], [], 0) for _ in prompts]
    held = HeldOut([SimpleNamespace(response=tok.decode(r[:-1])) for r in responses], prompts, prompts, conds,
                   responses, "accuracy")
    calls: list[tuple[bool, bool]] = []
    real = reading.read_held_out

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append((kwargs["answers"], kwargs["votes"] is not None))
        return real(*args, **kwargs)

    monkeypatch.setattr(reading, "read_held_out", counted)
    nll = reading.HeldOutNll(held, tok)
    nll(model, "base", "bare"), nll(model, "base", "with_memory")  # the student's choice reads these first
    assert calls == [(False, False), (True, True)]  # the bare base model answers no mode; its memory prompts do
    base = nll.figures(model, "base", ["memory", "vote"])
    assert len(calls) == 2
    assert base["memory"] == reading.accuracy(real(model, tok, prompts, responses, answers=True).answers, held)
    student = nll.figures(model, "student", ["consolidated", "memory+adapter"])
    assert calls[2:] == [(True, False), (True, False)] and set(student) == {"consolidated", "memory+adapter"}
    calls.clear()
    assert measure(model, tok, held, ["memory", "vote"], GeneratorConfig()) == base  # one reading for both
    assert calls == [(True, True)]



def test_a_training_step_is_measured_by_its_nll_alone(smollm: Any, rows: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = smollm
    prompts, responses = rows
    held = HeldOut([SimpleNamespace(response=tok.decode(r[:-1])) for r in responses], prompts, prompts,
                   [Conditioning([], [], 0) for _ in prompts], responses, "accuracy")
    calls: list[bool] = []
    real = reading.read_held_out

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(bool(kwargs.get("answers")))
        return real(*args, **kwargs)

    monkeypatch.setattr(reading, "read_held_out", counted)
    nll = reading.HeldOutNll(held, tok)
    step = nll.during(model, "step 5", "with_memory")
    assert calls == [False] and step == pytest.approx(real(model, tok, prompts, responses).nll, rel=1e-6)
    nll.same("student", "step 5")  # the student ends with step 5's weights: its NLL is that reading's
    assert nll(model, "student", "with_memory") == step and calls == [False]
    figures = nll.figures(model, "student", ["memory+adapter"])
    assert calls == [False, True]  # its answers need one reading with them
    assert figures["memory+adapter"] == reading.accuracy(real(model, tok, prompts, responses, answers=True).answers,
                                                         held)
