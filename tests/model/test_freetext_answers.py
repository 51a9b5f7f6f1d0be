"""Answers that use what was retrieved (issue 32): on a free-text tenant a dominating hit conditions the answer alone
(`focus_margin`), the kept answers follow the question (`fact_note`), and a trusted experience's answer is reused
verbatim only where the tenant's calibrated margin, the hit's nearness and its confirmed utility allow
(model/reuse.py); a label-like tenant keeps every hit."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
from logmem.memory import ConfigError, Hit, VectorMemory
from logmem.model.config import GeneratorConfig
from logmem.model.generator import MemoryGenerator
from logmem.model.prompting import focused, render_messages, select
from logmem.model.reuse import MIN_HELD_OUT, ReuseRule, calibrate

OFFICES = ["Lisbon", "Tampere", "Bergen", "Ghent", "Porto", "Graz", "Leeds", "Krakow", "Aarhus", "Bilbao", "Utrecht",
           "Brno"]


def hit(i: int, score: float, response: str, *, cos: float = 0.8, utility: float = 2 / 3) -> Hit:
    return Hit(id=i, score=score, sim=score, util=0.0, rec=0.0, cos=cos, utility=utility, trigger=f"request {i}",
               response=response, lesson=None, rejected=None, support=1, tenant="t")


def record(i: str, question: str, answer: str, tenant: str) -> dict:
    return {"id": i, "tenant": tenant, "messages": [{"role": "user", "content": question},
                                                    {"role": "assistant", "content": answer}],
            "feedback": [{"turn": 1, "kind": "like"}]}


def facts(tenant: str, *, twice: int) -> list[dict]:
    """A door code and a Wi-Fi password per office, each taught once; the first `twice` door codes are taught
    again in other words (the same answer: what reuse may repeat)."""
    out = []
    for j, office in enumerate(OFFICES):
        code = f"The door code of the {office} office is {4100 + 37 * j}."
        out.append(record(f"{tenant}-d{j}", f"What is the door code of the {office} office?", code, tenant))
        out.append(record(f"{tenant}-w{j}", f"What is the Wi-Fi password at the {office} office?",
                          f"The {office} Wi-Fi password is cedar-{j}{j}.", tenant))
        if j < twice:
            out.append(record(f"{tenant}-r{j}", f"Which keypad number opens the door in {office}?", code, tenant))
    return out


@pytest.fixture()
def memory(tmp_path: Path, embedder) -> VectorMemory:  # type: ignore[no-untyped-def]
    mem = VectorMemory(tmp_path / "home", embedder=embedder)
    mem.ingest(facts("offices", twice=6) + facts("few", twice=0)[:MIN_HELD_OUT - 2])
    mem.ingest([record(f"label-{i}", f"Classify request number {i} about {o}", "LABEL-A" if i % 2 else "LABEL-B",
                       "labels") for i, o in enumerate(OFFICES)])
    yield mem
    mem.close()


def test_a_dominating_hit_conditions_alone_and_close_ones_stay(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny_lm
    config = GeneratorConfig(focus_margin=0.1)
    dominated = [hit(1, 0.55, "c"), hit(2, 0.8, "a"), hit(3, 0.6, "b")]
    assert [h.id for h in select(dominated, tok, config, focus=True).experiences] == [2]
    close = [hit(1, 0.5, "c"), hit(2, 0.8, "a"), hit(3, 0.75, "b")]
    assert [h.id for h in select(close, tok, config, focus=True).experiences] == [3, 2]  # best last
    assert len(select(dominated, tok, config).experiences) == 3  # no focus: every hit that fits
    assert len(select(dominated, tok, replace(config, focus_margin=None), focus=True).experiences) == 3
    assert [h.id for h in focused([], 0.1)] == []


def test_the_kept_answers_follow_the_question_and_a_lesson_that_repeats_one_is_not(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny_lm
    right = "The door code of the Lisbon office is 4471."
    hits = [replace(hit(1, 0.8, right), lesson=right), replace(hit(2, 0.75, "Ghent: 1234."), lesson="Ask first."),
            hit(3, 0.4, "Porto: 9999.")]
    cond = select(hits, tok, GeneratorConfig(focus_margin=0.1), focus=True)
    assert cond.facts == [right, "Ghent: 1234."] and cond.lessons == ["Ask first."]
    asked = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Lisbon door?"}]
    system, *exchanges, question = render_messages(asked, cond, "exchanges")
    # the lesson in the system note; the kept answers in the question's own turn, after it, best first
    assert system["content"].startswith("Be brief.") and "Ask first." in system["content"]
    assert right not in system["content"] and [m["role"] for m in exchanges] == ["user", "assistant"] * 2
    assert question["role"] == "user" and question["content"].startswith("Lisbon door?\n\n")
    assert question["content"].index(right) < question["content"].index("Ghent: 1234.")
    spliced = render_messages([], cond, "exchanges")  # no question to follow: the system note states them
    assert spliced[0]["role"] == "system" and right in spliced[0]["content"] and "Porto" not in str(spliced)
    unfocused = render_messages(asked[1:], select(hits, tok, GeneratorConfig()), "exchanges")
    assert unfocused[-1] == asked[1]  # no focus (label-like tenants): the question as the caller asked it
    in_system = render_messages(asked, select(hits, tok, GeneratorConfig(fact_place="system"), focus=True),
                                "exchanges")
    assert right in in_system[0]["content"] and in_system[-1] == asked[1]  # the note in the system turn instead
    with pytest.raises(ConfigError, match="fact_place must be 'question' or 'system', got 'answer'"):
        GeneratorConfig(fact_place="answer")
    plain = select(hits, tok, GeneratorConfig(focus_margin=0.1, fact_note=False), focus=True)
    assert plain.facts == [] and plain.lessons == [right, "Ask first."]
    assert select(hits, tok, GeneratorConfig()).facts == []  # no focus (label-like tenants): no such note


def test_the_generator_focuses_free_text_tenants_only(tiny_lm, memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    gen = MemoryGenerator(model, tok, memory, config=GeneratorConfig(k=6, focus_margin=0.05))
    question = [{"role": "user", "content": "Which code unlocks the entrance of the Lisbon office?"}]
    hits = memory.search(question[0]["content"], 6, tenant="offices")
    reply = gen.chat(question, tenant="offices", max_new_tokens=2, log=False)
    best = max(h.score for h in hits)
    assert reply.experiences and all(best - h.score <= 0.05 for h in reply.experiences)
    assert len(reply.experiences) < len(hits)  # the other offices' facts trail the Lisbon door code
    cond, sent = gen.messages_for(question, tenant="offices")  # what an upstream is sent: the same
    assert [h.id for h in cond.experiences] == [h.id for h in reply.experiences]
    top = max(reply.experiences, key=lambda h: h.score).response
    asked = sent[-1]["content"]  # the kept answers follow the question, in its turn
    assert sent[-1]["role"] == "user" and asked.startswith(question[0]["content"]) and top in asked
    assert reply.prompt.rindex(question[0]["content"]) < reply.prompt.rindex(top)
    labels = gen.chat([{"role": "user", "content": "Classify request number 3 about Ghent"}], tenant="labels",
                      max_new_tokens=2, log=False, mode=replace(gen.mode("labels"), mode="memory"))
    assert len(labels.experiences) == 6  # answers repeat: every neighbour stays


def test_a_reuse_rule_reuses_only_a_confirmed_near_hit_that_leads_by_its_margin() -> None:
    rule = ReuseRule(margin=0.1, held_out=50, reused=5, wrong=0, min_cos=0.5, min_utility=0.6)
    leader = hit(1, 0.8, "The door code is 4471.")
    assert rule.pick([hit(2, 0.65, "The door code is 1234."), leader]) is leader
    assert rule.pick([hit(2, 0.75, "The door code is 1234."), leader]) is None  # another answer too close
    assert rule.pick([hit(2, 0.79, "the door code is 4471"), leader, hit(3, 0.6, "x")]) is not None  # same answer
    assert rule.pick([hit(2, 0.6, "x"), replace(leader, utility=0.5)]) is None  # utility unconfirmed
    assert rule.pick([hit(2, 0.3, "x"), replace(leader, cos=0.4)]) is None  # not a near paraphrase
    assert replace(rule, margin=math.inf).pick([leader]) is None and rule.pick([]) is None
    assert rule.precision == 1.0 and replace(rule, reused=0).precision is None


def test_the_margin_is_calibrated_on_held_out_experiences(memory) -> None:  # type: ignore[no-untyped-def]
    config = GeneratorConfig(reuse=True, reuse_risk=0.0)
    rule = calibrate(memory, "offices", config)
    assert rule.held_out == len(OFFICES) * 2 + 6
    # with no risk allowed, no held-out request gets another fact by reuse; those taught twice may be reused
    assert rule.wrong == 0 and math.isfinite(rule.margin)
    assert rule.reused == 0 or rule.precision == 1.0
    looser = calibrate(memory, "offices", replace(config, reuse_risk=0.5))
    assert looser.margin <= rule.margin and looser.wrong <= 0.5 * looser.held_out
    few = calibrate(memory, "few", config)  # too few experiences to calibrate on: never reuse
    assert few.held_out < MIN_HELD_OUT and math.isinf(few.margin) and few.pick(memory.search("door code", 4,
                                                                                             tenant="few")) is None


def test_the_generator_reuses_above_the_calibrated_margin_and_generates_below(tiny_lm, memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    gen = MemoryGenerator(model, tok, memory, config=GeneratorConfig(reuse=True, reuse_risk=0.0))
    rule = gen.reuse_rule("offices")
    asked = [[{"role": "user", "content": "What is the door code of the Porto office?"}],  # a taught trigger itself
             [{"role": "user", "content": "office"}]]  # nothing leads
    replies = gen.chat_many(asked, tenant="offices", max_new_tokens=3, log=False)
    expected = [rule.pick(memory.search(m[0]["content"], gen.gen_config.k, tenant="offices")) for m in asked]
    assert expected[0] is not None and expected[1] is None
    assert replies[0].chosen_by == "reuse" and replies[0].text == expected[0].response
    assert "4248" in replies[0].text and [h.id for h in replies[0].experiences] == [expected[0].id]
    assert replies[1].chosen_by == "model" and len(replies[1].experiences) >= 1
    off = MemoryGenerator(model, tok, memory, config=GeneratorConfig(reuse=False))
    assert off.chat(asked[0], tenant="offices", max_new_tokens=3, log=False).chosen_by == "model"
