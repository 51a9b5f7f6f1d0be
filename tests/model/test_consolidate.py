"""Consolidation on a tiny model: selection, pairs, batching masks, the gate both ways."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from logmem.memory import ConfigError, VectorMemory
from logmem.model.consolidate import ConsolidationConfig, consolidate
from logmem.model.gate import gate
from logmem.model.lineage import plan_job
from logmem.model.pairs import build_pairs, split_holdout
from logmem.model.scoring import response_batch, response_logits
from logmem.model.training import step_gradients, token_chunks

THINGS = ["sky", "sea", "lake", "sapphire", "bluebell", "jeans", "ocean", "iris", "cornflower", "lapis",
          "denim", "cobalt", "navy flag", "blue whale", "smurf", "blueberry"]


def _corrections(n: int) -> list[dict]:
    """`n` answers the user disliked and corrected, the right answer liked: experiences with a rejected answer."""
    return [{"id": f"fix{i}", "user": "u1", "timestamp": 1_760_000_100 + i,
             "messages": [{"role": "user", "content": f"Which colour is the {t}?"},
                          {"role": "assistant", "content": "GREEN"},
                          {"role": "user", "content": "No, that's wrong, it is BLUE."},
                          {"role": "assistant", "content": "BLUE"}],
             "feedback": [{"turn": 1, "kind": "dislike"}, {"turn": 3, "kind": "like"}]}
            for i, t in enumerate(["summer sky", "deep sea", "glacier lake"][:n])]


def _records() -> list[dict]:
    return [{"id": f"c{i}", "user": f"u{i}", "timestamp": 1_760_000_000 + i,
             "messages": [{"role": "user", "content": f"Which colour is the {t}?"},
                          {"role": "assistant", "content": "BLUE"}],
             "feedback": [{"turn": 1, "kind": "like"}]} for i, t in enumerate(THINGS)]


@pytest.fixture()
def memory(tmp_path: Path, embedder) -> VectorMemory:  # type: ignore[no-untyped-def]
    mem = VectorMemory(tmp_path / "home", embedder=embedder)
    mem.ingest(_records())
    mem.ingest([{"id": "bad", "messages": [{"role": "user", "content": "Which colour is grass?"},
                                           {"role": "assistant", "content": "BLUE"}],
                 "feedback": [{"turn": 1, "kind": "like"}]}])
    yield mem
    mem.close()


def test_selection_follows_utility_support_and_consolidated(memory: VectorMemory) -> None:
    config = ConsolidationConfig()
    everything = plan_job(memory, "default", config).new
    assert len(everything) == len(THINGS) + 1
    grass = next(e.id for e in everything if "grass" in e.trigger)
    memory.record_outcome([grass], False)
    memory.record_outcome([grass], False)
    assert grass not in {e.id for e in plan_job(memory, "default", config).new}
    assert plan_job(memory, "default", replace(config, min_support=2)).new == []


def test_holdout_split_is_seeded_and_disjoint(memory: VectorMemory) -> None:
    chosen = plan_job(memory, "default", ConsolidationConfig()).new
    train, held = split_holdout(chosen, ConsolidationConfig(holdout=0.25))
    again = split_holdout(chosen, ConsolidationConfig(holdout=0.25))
    assert [e.id for e in held] == [e.id for e in again[1]]
    assert len(held) == round(len(chosen) * 0.25) and not {e.id for e in train} & {e.id for e in held}
    other = split_holdout(chosen, ConsolidationConfig(holdout=0.25, seed=1))[1]
    assert [e.id for e in other] != [e.id for e in held]


def test_pairs_keep_the_experience_out_of_its_teacher_prompt(memory: VectorMemory, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny_lm
    chosen = plan_job(memory, "default", ConsolidationConfig()).new[:3]
    pairs = build_pairs(chosen, tok, memory, "default", ConsolidationConfig(method="kd", teacher_k=4))
    for e, p in zip(chosen, pairs):
        assert p.response[-1] == tok.eos_token_id
        assert tok.decode(p.response[:-1]) == "BLUE"
        teacher, student = tok.decode(p.teacher), tok.decode(p.student)
        assert teacher.count(e.trigger) == 1 and student.count(e.trigger) == 1
        assert len(p.teacher) > len(p.student) and "BLUE" in teacher
    with_memory = build_pairs(chosen, tok, memory, "default", ConsolidationConfig(with_memory=True, student_k=0))
    assert all(p.student == p.teacher for p in with_memory)  # student_k 0: the teacher's whole prompt


def test_the_memory_students_prompts_hold_the_best_student_k_experiences(memory: VectorMemory, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny_lm
    chosen = plan_job(memory, "default", ConsolidationConfig()).new[:3]
    config = ConsolidationConfig(with_memory=True, teacher_k=4)
    full = build_pairs(chosen, tok, memory, "default", config)
    few = build_pairs(chosen, tok, memory, "default", replace(config, student_k=2))
    for e, f, p in zip(chosen, full, few):
        assert p.teacher == f.teacher == f.student and p.response == f.response
        shown = tok.decode(p.student)
        assert shown.count("Which colour") == 3 and shown.count(e.trigger) == 1
        # the student's two are the teacher's last two (the best ones, nearest the question), in the same order
        assert tok.decode(f.teacher).endswith(shown.split("<|im_end|>", 1)[1])
    assert all(len(p.student) < len(p.teacher) for p in few)


def test_long_prompts_lose_their_start_and_say_so(memory: VectorMemory, tiny_lm, caplog) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny_lm
    chosen = plan_job(memory, "default", ConsolidationConfig()).new[:3]
    config = ConsolidationConfig(method="kd", teacher_k=4)
    full = build_pairs(chosen, tok, memory, "default", config)
    assert "longer than max_length" not in caplog.text
    short = min(len(p.teacher) for p in full) - 1 + len(full[0].response)
    cut = build_pairs(chosen, tok, memory, "default", replace(config, max_length=short))
    for f, c in zip(full, cut):
        assert c.response == f.response and c.student == f.student
        assert len(c.teacher) + len(c.response) == short and c.teacher == f.teacher[-len(c.teacher):]
    assert f"3 of 3 training prompts are longer than max_length={short}" in caplog.text


def test_requests_that_used_an_experience_and_went_well_are_more_pairs(memory: VectorMemory, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny_lm
    chosen = plan_job(memory, "default", ConsolidationConfig()).new
    sky = next(e for e in chosen if "sky" in e.trigger)
    memory.ingest([{"id": "used", "user": "u9", "metadata": {"retrieved": [sky.id]},
                    "messages": [{"role": "user", "content": "Tell me the colour of the sky, please"},
                                 {"role": "assistant", "content": "blue"}],
                    "feedback": [{"turn": 1, "kind": "like"}]}])
    extra = memory.went_well([sky])
    assert extra == {sky.id: ["Tell me the colour of the sky, please"]}
    pairs = build_pairs([sky], tok, memory, "default", ConsolidationConfig(), extra=extra)
    assert [tok.decode(p.student).count("Tell me the colour") for p in pairs] == [0, 1]
    assert all(p.experience_id == sky.id and tok.decode(p.response[:-1]) == "BLUE" for p in pairs)
    outcome = consolidate(copy.deepcopy(tiny_lm[0]), tok, memory, config=ConsolidationConfig(max_steps=1),
                          experiences=chosen)
    assert sky.id in outcome.covered and outcome.metrics["train_pairs"] == outcome.metrics["train"] + 1


def test_with_a_dpo_term_the_triggers_pair_carries_the_rejected_answer(memory: VectorMemory, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny_lm
    memory.ingest(_corrections(1))
    fixed = next(e for e in plan_job(memory, "default", ConsolidationConfig()).new if "summer" in e.trigger)
    assert fixed.rejected == "GREEN"
    memory.ingest([{"id": "used", "user": "u9", "metadata": {"retrieved": [fixed.id]},
                    "messages": [{"role": "user", "content": "What colour has a summer sky?"},
                                 {"role": "assistant", "content": "blue"}],
                    "feedback": [{"turn": 1, "kind": "like"}]}])
    extra = memory.went_well([fixed])
    off = build_pairs([fixed], tok, memory, "default", ConsolidationConfig(), extra=extra)
    on = build_pairs([fixed], tok, memory, "default", ConsolidationConfig(dpo_weight=0.5), extra=extra)
    assert [p.rejected for p in off] == [None, None]
    assert on[0].rejected is not None and tok.decode(on[0].rejected[:-1]) == "GREEN"
    assert on[0].rejected[-1] == tok.eos_token_id
    assert on[1].rejected is None  # the other request was not the one the correction was about
    assert [(p.student, p.response) for p in on] == [(p.student, p.response) for p in off]


def test_batch_masks_mark_exactly_the_positions_that_predict_the_response() -> None:
    ids, attn, predicts = response_batch([([5, 6, 7], [8, 9]), ([5], [8])], pad=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9], [0, 0, 0, 5, 8]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert ids[:, 1:][predicts[:, :-1]].tolist() == [8, 9, 8]


def test_response_logits_are_the_full_forward_pass_at_the_response_positions(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = tiny_lm
    rows = [([5, 6, 7, 11], [8, 9, 10]), ([5], [8]), ([12, 13], [14, 15])]
    logits, targets = response_logits(model, rows, pad=tokenizer.pad_token_id)
    ids, attn, predicts = response_batch(rows, pad=tokenizer.pad_token_id)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=attn).logits
    assert targets.tolist() == [8, 9, 10, 8, 14, 15]
    assert logits.shape == (6, full.shape[-1])
    torch.testing.assert_close(logits.detach(), full[predicts], rtol=1e-5, atol=1e-5)


def test_chunks_keep_order_and_the_token_budget(memory: VectorMemory, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    chosen = plan_job(memory, "default", ConsolidationConfig()).new
    pairs = build_pairs(chosen, tiny_lm[1], memory, "default", ConsolidationConfig(method="kd", teacher_k=4))
    width = max(len(p.teacher) + len(p.response) for p in pairs)
    for budget in (1, width, 3 * width, 10**6):
        chunks = token_chunks(pairs, budget)
        assert [p for c in chunks for p in c] == pairs
        assert all(len(c) == 1 or len(c) * width <= budget for c in chunks)
    assert len(token_chunks(pairs, 1)) == len(pairs) and len(token_chunks(pairs, 10**6)) == 1
    assert len(token_chunks(pairs, 3 * width)) == -(-len(pairs) // 3)


@pytest.mark.parametrize(("method", "dpo_weight"), [("sft", 0.0), ("sft+kd", 0.0), ("sft", 1.0)])
def test_a_step_in_chunks_has_the_gradient_of_the_whole_batch(memory: VectorMemory, tiny_lm, method: str,  # type: ignore[no-untyped-def]
                                                              dpo_weight: float) -> None:
    from peft import LoraConfig, get_peft_model

    tok = tiny_lm[1]
    memory.ingest(_corrections(2))
    chosen = plan_job(memory, "default", ConsolidationConfig()).new[-6:]
    whole = ConsolidationConfig(method=method, teacher_k=4, max_tokens=10**6, dpo_weight=dpo_weight)
    pairs = build_pairs(chosen, tok, memory, "default", whole)
    assert sum(p.rejected is not None for p in pairs) == (2 if dpo_weight else 0)
    grads = []
    for config in (whole, replace(whole, max_tokens=1), replace(whole, dpo_weight=0.0)):
        torch.manual_seed(0)
        model = get_peft_model(copy.deepcopy(tiny_lm[0]), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                     init_lora_weights=False))
        loss = step_gradients(model, pairs, config, tok.pad_token_id)
        grads.append((loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss_whole, g_whole), (loss_split, g_split), (loss_plain, _) = grads
    if dpo_weight:  # the DPO term adds ~log 2 per preference pair at the start (student close to base)
        assert 0.3 < (loss_whole - loss_plain) / dpo_weight < 1.2
    assert loss_split == pytest.approx(loss_whole, rel=1e-5) and loss_whole > 0
    assert g_whole.keys() == g_split.keys() and all(g.abs().sum() > 0 for g in g_whole.values())
    for name in g_whole:
        torch.testing.assert_close(g_split[name], g_whole[name], rtol=1e-4, atol=1e-6)


def test_gate_rules() -> None:
    config = ConsolidationConfig(gate_margin=0.1, probe_bound=0.05)
    assert gate(2.0, 1.7, 10.0, 10.2, config)[0]
    assert not gate(2.0, 1.9, 10.0, 10.0, config)[0]  # not 10% better
    ok, why = gate(2.0, 1.0, 10.0, 11.0, config)
    assert not ok and "probe perplexity" in why
    assert gate(0.80, 0.81, 10.0, 10.0, config, metric="accuracy")[0]  # accuracy: higher is better
    ok, why = gate(0.80, 0.80, 10.0, 10.0, config, metric="accuracy", against="the served mode vote")
    assert not ok and why == "held-out accuracy 0.8000 does not beat the served mode vote 0.8000"
    assert not gate(0.80, 0.85, 10.0, 10.0, replace(config, accuracy_margin=0.05), metric="accuracy")[0]


@pytest.mark.parametrize("method", ["sft", "kd", "sft+kd"])
def test_a_useless_adapter_is_rejected(memory: VectorMemory, tiny_lm, method: str) -> None:  # type: ignore[no-untyped-def]
    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    outcome = consolidate(model, tok, memory, config=ConsolidationConfig(method=method, lr=0.0, max_steps=1,
                                                                          batch_size=4, holdout=0.25))
    assert not outcome.promoted
    assert outcome.metrics["student_nll"] == pytest.approx(outcome.metrics["base_nll"], rel=1e-5)
    assert "does not beat" in outcome.metrics["gate"]


def test_a_useful_adapter_is_promoted(memory: VectorMemory, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    # against the bare base model: on these logs the vote (every answer BLUE) is served, and no adapter beats it
    config = ConsolidationConfig(lr=1e-2, epochs=8, batch_size=4, holdout=0.25, probe_bound=10.0,
                                 gate_reference="base")
    outcome = consolidate(model, tok, memory, config=config)
    assert outcome.promoted, outcome.metrics["gate"]
    # the tiny model's logits are bounded (normed states, small tied embeddings): NLL can fall ~1 nat
    assert outcome.metrics["student_nll"] < outcome.metrics["base_nll"] - 0.5
    assert set(outcome.covered).isdisjoint(outcome.holdout) and len(outcome.covered) + len(outcome.holdout) == 17
    # the base weights are untouched: only the adapter learned
    after = {name.replace(".base_layer", ""): p for name, p in outcome.adapter.get_base_model().named_parameters()
             if "lora_" not in name}
    assert after.keys() == before.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="ConsolidationConfig.method must be one of sft, kd, sft\\+kd"):
        ConsolidationConfig(method="dpo")


def test_too_few_experiences(tmp_path: Path, embedder, tiny_lm) -> None:  # type: ignore[no-untyped-def]
    with VectorMemory(tmp_path / "h", embedder=embedder) as mem, \
            pytest.raises(ConfigError, match="has 0 experience"):
        consolidate(tiny_lm[0], tiny_lm[1], mem)
