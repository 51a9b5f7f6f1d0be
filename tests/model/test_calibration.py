"""Memory mode's `calibrate`: the model picks among the memory's answers with its own label bias taken off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from logmem.memory import ConfigError, VectorMemory
from logmem.model.config import GeneratorConfig
from logmem.model.generator import MemoryGenerator
from logmem.model.voting import AnswerBias, answer_logprobs, calibrated_answer, memory_answer_scores

LABELS = ["BILLING", "SHIPPING", "RETURNS"]
TOPICS = ["my invoice shows a double charge", "where is my parcel", "how do I send the shoes back",
          "the card was charged twice this month", "tracking number does not work", "refund for a broken lamp",
          "I was billed for a cancelled plan", "delivery is a week late", "can I return an opened box"]
FREE = [("how do I reset my router", "Hold the reset button for ten seconds, then wait for the lights."),
        ("what is a good name for a cat", "Miso, Pepper or Juniper are popular choices."),
        ("how long do I boil an egg", "Nine minutes for a firm yolk, six for a soft one.")]
ASK = [{"role": "user", "content": "I got charged two times"}]


@pytest.fixture
def memory(tmp_path: Path, embedder: Any) -> VectorMemory:
    mem = VectorMemory(tmp_path / "home", embedder=embedder)
    for tenant, pairs in (("labels", [(q, LABELS[i % 3]) for i, q in enumerate(TOPICS)]), ("free", FREE)):
        mem.ingest([{"id": f"{tenant}-{i}", "messages": [{"role": "user", "content": q},
                                                           {"role": "assistant", "content": a}],
                     "feedback": [{"turn": 1, "kind": "like"}]} for i, (q, a) in enumerate(pairs)], tenant=tenant)
    yield mem
    mem.close()


def test_answer_bias_is_the_running_mean_of_each_answers_lead_over_the_mean() -> None:
    bias = AnswerBias()
    assert bias.of("A") == 0.0  # nothing seen: no correction
    bias.update(["A", "B"], [-1.0, -3.0])
    bias.update(["A", "C"], [-2.0, -2.0])
    assert (bias.of("A"), bias.of("B"), bias.of("C")) == pytest.approx((0.5, -1.0, 0.0))


def test_calibrated_answer_is_the_best_score_less_the_bias(tiny_lm: Any, memory: VectorMemory) -> None:
    model, tok = tiny_lm
    gen = MemoryGenerator(model, tok, memory, config=GeneratorConfig(choose="off", constrain=True, calibrate=True))
    _, cond, prompt = gen.prompt_for(ASK, tenant="labels")
    answers = list(dict.fromkeys(h.response for h in cond.experiences))
    assert len(answers) >= 2
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    logp = answer_logprobs(model, ids, [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                                        for a in answers]).tolist()
    ranked = sorted(answers, key=lambda a: -logp[answers.index(a)])

    bias = AnswerBias()
    assert calibrated_answer(model, tok, ids, cond.experiences, gen.gen_config, bias) == ranked[0]  # no bias yet
    assert bias.of(ranked[0]) > bias.of(ranked[-1])  # it learned this request's scores
    biased = AnswerBias()  # a model that "always" favours the top answer: taken off, the next one wins
    biased.update(ranked, [100.0 if a == ranked[0] else 0.0 for a in ranked])
    assert calibrated_answer(model, tok, ids, cond.experiences, gen.gen_config, biased) == ranked[1]


def test_memory_mode_with_calibrate_answers_with_the_memorys_answers_only_where_they_repeat(
        tiny_lm: Any, memory: VectorMemory) -> None:
    model, tok = tiny_lm
    config = GeneratorConfig(choose="off", constrain=True, calibrate=True)
    gen = MemoryGenerator(model, tok, memory, config=config)
    reply = gen.chat(ASK, tenant="labels", max_new_tokens=8, log=False)
    assert (reply.text in LABELS, reply.chosen_by, reply.mode) == (True, "model", "memory")  # no vote: the model's
    free = [{"role": "user", "content": "how do I reset my modem"}]
    plain = MemoryGenerator(model, tok, memory, config=GeneratorConfig(choose="off")).chat(
        free, tenant="free", max_new_tokens=8, log=False)
    assert gen.chat(free, tenant="free", max_new_tokens=8, log=False).text == plain.text  # free text: generated


def test_a_tenants_preference_is_measured_on_its_stored_experiences_before_its_first_answer(
        tiny_lm: Any, memory: VectorMemory) -> None:
    model, tok = tiny_lm
    gen = MemoryGenerator(model, tok, memory, config=GeneratorConfig(choose="off", constrain=True, calibrate=True))
    expected = AnswerBias()  # each stored request asked with its neighbours, itself left out
    for e in memory.iter_experiences("labels"):
        hits = [h for h in memory.search(e.trigger, gen.gen_config.k + 1, tenant="labels") if h.id != e.id]
        assert all(h.id != e.id for h in hits[: gen.gen_config.k])
        cond = gen._condition(hits[: gen.gen_config.k])
        ids = tok(gen._prompt([{"role": "user", "content": e.trigger}], cond), return_tensors="pt",
                  add_special_tokens=False)["input_ids"]
        expected.update(*memory_answer_scores(model, tok, ids, cond.experiences, gen.gen_config))
    bias = gen._answer_bias("labels")
    assert [bias.of(a) for a in LABELS] == pytest.approx([expected.of(a) for a in LABELS], abs=1e-4)
    assert any(abs(bias.of(a)) > 1e-3 for a in LABELS)  # measured, not the zero of an empty estimate
    assert all(bias.of(a) == 0.0 for _, a in FREE)  # another tenant's answers are not in it
    assert gen._answer_bias("labels") is bias  # measured once per tenant

    cold = MemoryGenerator(model, tok, memory, config=GeneratorConfig(choose="off", constrain=True, calibrate=True,
                                                                      calibrate_warmup=0))
    assert all(cold._answer_bias("labels").of(a) == 0.0 for a in LABELS)
    only = MemoryGenerator(model, tok, memory, config=GeneratorConfig(choose="off", constrain=True, calibrate=True,
                                                                      calibrate_warmup=2))
    assert sum(only._answer_bias("labels")._n.values()) < sum(bias._n.values())  # two of the nine requests


def test_calibrate_needs_constrain() -> None:
    with pytest.raises(ConfigError, match="calibrate must be False unless constrain=True"):
        GeneratorConfig(calibrate=True)
