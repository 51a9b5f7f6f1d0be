"""The drop-in contract, conditioning and budgets, and the feedback loop of MemoryGenerator."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from logmem.memory import ConfigError, NotFoundError, VectorMemory
from logmem.memory.search import Hit
from logmem.model import prompting
from logmem.model.config import GeneratorConfig
from logmem.model.generator import MemoryGenerator
from logmem.model.prompting import (
    UNCHANGED_WHEN_EMPTY,
    ChatMarkers,
    Conditioning,
    load_template,
    render_messages,
    select,
)
from logmem.model.voting import answer_logprobs, choose_answer

FACTS = [
    ("What is the launch code of project Zephyr?", "The launch code of project Zephyr is 7421."),
    ("Who maintains the billing service?", "The billing service is maintained by the Otter team."),
    ("Which port does the staging database use?", "The staging database listens on port 6543."),
]


def _record(i: int, q: str, a: str, kind: str = "like", tenant: str = "default") -> dict:
    return {"id": f"r{i}", "tenant": tenant, "user": f"u{i}", "timestamp": 1_760_000_000 + i,
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "feedback": [{"turn": 1, "kind": kind}]}


@pytest.fixture()
def memory(tmp_path: Path, embedder) -> VectorMemory:  # type: ignore[no-untyped-def]
    mem = VectorMemory(tmp_path / "home", embedder=embedder)
    mem.ingest([_record(i, q, a) for i, (q, a) in enumerate(FACTS)])
    yield mem
    mem.close()


@pytest.fixture()
def empty_memory(tmp_path: Path, embedder) -> VectorMemory:  # type: ignore[no-untyped-def]
    mem = VectorMemory(tmp_path / "empty", embedder=embedder)
    yield mem
    mem.close()


def _batch(tokenizer, questions: list[str]) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in questions]
    return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)


QUESTIONS = ["What is the launch code for the Zephyr project?", "Tell me a joke about cats, please."]


@pytest.mark.parametrize("which", ["none", "empty"])
def test_without_memory_generate_is_the_wrapped_models(tiny_lm, empty_memory, which) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    gen = MemoryGenerator(model, tok, None if which == "none" else empty_memory)
    enc = _batch(tok, QUESTIONS)
    want = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    got = gen.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(got, want)


def test_generate_with_memory_keeps_callers_ids_and_conditions(tiny_lm, memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    gen = MemoryGenerator(model, tok, memory, config=GeneratorConfig(k=2))
    enc = _batch(tok, QUESTIONS)
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["input_ids"]), with_kwargs=True)
    try:
        out = gen.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    finally:
        hook.remove()
    assert out.shape == (2, enc["input_ids"].shape[1] + 6)
    assert torch.equal(out[:, : enc["input_ids"].shape[1]], enc["input_ids"])
    # what the model read first: each row's own prompt with the memory's best experience spliced in
    first = [tok.decode(row, skip_special_tokens=True) for row in seen[0]]
    assert "7421" in first[0] and first[0].rstrip().endswith(QUESTIONS[0] + "\nassistant")
    assert QUESTIONS[1] in first[1]


def test_splice_puts_the_exchange_before_the_last_user_turn(tiny_lm, memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    gen = MemoryGenerator(model, tok, memory, config=GeneratorConfig(k=1))
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTIONS[0]}], tokenize=False,
                                     add_generation_prompt=True)
    spliced = gen._splice(prompt, None)
    assert spliced is not None
    assert spliced.index("7421") < spliced.rindex(QUESTIONS[0])
    assert spliced.endswith(prompt[prompt.rfind("<|im_start|>user"):])


def test_drop_in_generate_reads_the_lessons_too(tiny_lm, embedder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    with VectorMemory(tmp_path / "h", embedder=embedder) as mem:
        mem.ingest([{"id": "c1", "messages": [
            {"role": "user", "content": "How do I delete a remote git branch?"},
            {"role": "assistant", "content": "git branch -d name"},
            {"role": "user", "content": "No, that only deletes the local branch."},
            {"role": "assistant", "content": "git push origin --delete name"}],
            "feedback": [{"turn": 1, "kind": "dislike"}, {"turn": 3, "kind": "like"}]}])
        gen = MemoryGenerator(model, tok, mem)
        question = "how to delete a branch on the remote?"
        prompt = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
        spliced = gen._splice(prompt, None)
    assert spliced is not None and spliced.startswith("<|im_start|>system\nBe brief.")
    note = spliced.index("Lessons from earlier corrections")
    assert note < spliced.index("git push origin --delete name") < spliced.rindex(question)
    assert "only deletes the local branch" in spliced[note:spliced.index("git push origin --delete name")]


def test_attributes_fall_through_to_the_wrapped_model(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    gen = MemoryGenerator(model, tok, None)
    assert gen.config is model.config
    assert gen.device == model.device
    with pytest.raises(AttributeError):
        gen.no_such_attribute  # noqa: B018


def test_chat_prompt_orders_best_experience_last_and_respects_budget(tiny_lm, memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    gen = MemoryGenerator(model, tok, memory, config=GeneratorConfig(k=3))
    reply = gen.chat([{"role": "user", "content": "launch code of Zephyr?"}], max_new_tokens=4)
    assert [h.response for h in reply.experiences][-1] == FACTS[0][1]
    # the best exchange just before the question (its answer stated again after it, on a free-text tenant)
    assert reply.prompt.index("7421") < reply.prompt.rindex("launch code of Zephyr?")
    scores = [h.score for h in reply.experiences]
    assert scores == sorted(scores)
    # a budget that fits one experience keeps only the best one
    one = len(tok(FACTS[0][0] + FACTS[0][1], add_special_tokens=False)["input_ids"]) + 12
    small = MemoryGenerator(model, tok, memory, config=GeneratorConfig(k=3, memory_token_budget=one))
    reply = small.chat([{"role": "user", "content": "launch code of Zephyr?"}], max_new_tokens=4)
    assert [h.response for h in reply.experiences] == [FACTS[0][1]]
    assert reply.memory_tokens <= one
    none = MemoryGenerator(model, tok, memory, config=GeneratorConfig(k=3, memory_token_budget=0))
    assert none.chat([{"role": "user", "content": "launch code?"}], max_new_tokens=2).experiences == []


def test_the_budget_counts_an_exchange_as_the_template_shows_it(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny_lm
    instruction = "Answer with the name of one city and nothing else, in one word, as the office list has it. " * 3
    hits = [Hit(id=i, score=1.0 - i / 10, sim=0.0, util=0.0, rec=0.0, cos=0.9, utility=0.5,
                trigger=f"{instruction}\n\nWhere is office {i}?", response=f"City {i}",
                lesson="Offices moved in May." if i == 0 else None, rejected=None, support=1, tenant="t",
                instruction=instruction) for i in range(3)]

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    shown = sum(count(h.body) + count(h.response) for h in hits)
    assert "office 0" in hits[0].body and instruction.strip() not in hits[0].body
    assert sum(count(h.trigger) + count(h.response) for h in hits) > shown + count(instruction)
    config = GeneratorConfig(memory_token_budget=shown)
    cond = select(hits, tok, config)  # the exchanges template shows each request without its instruction
    assert [h.id for h in cond.experiences] == [2, 1, 0]
    assert cond.memory_tokens == shown + count("Offices moved in May.")
    # the plain template shows the whole request: the same budget holds fewer of them
    assert len(select(hits, tok, replace(config, template="plain")).experiences) < 3


def test_token_counts_are_the_tokenizers_whether_cached_or_not(tiny_lm, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny_lm
    monkeypatch.setattr(prompting, "COUNTED_TEXTS", 4)
    texts = [q for q, _ in FACTS] + [a for _, a in FACTS] + [FACTS[0][0], ""]
    expected = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert prompting._counts(tok, texts[:2]) == expected[:2]
    assert prompting._counts(tok, texts) == expected  # some cached, some new, repeats, past the cache's size
    assert prompting._counts(tok, texts[::-1]) == expected[::-1]


def test_token_counts_ignore_the_truncation_and_padding_left_on_the_tokenizer(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    """A call through the tokenizer leaves its truncation and padding set on its Rust tokenizer: counts stay whole."""
    _, tok = tiny_lm
    texts = [q + " " + a for q, a in FACTS] + ["<|im_start|>user\nnaïve café ☕<|im_end|>", "x" * 300]
    expected = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert max(expected) > 8 and len(set(expected)) > 2
    own = copy.deepcopy(tok)  # a tokenizer whose counts start here, its Rust tokenizer left truncating and padding
    own.backend_tokenizer.enable_truncation(max_length=4)
    own.backend_tokenizer.enable_padding(length=64)
    assert prompting._counts(own, texts) == expected
    prompting.forget_token_counts(own)
    assert prompting._counts(own, texts[::-1]) == expected[::-1]


def test_lessons_become_a_system_note(tiny_lm, tmp_path, embedder) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    with VectorMemory(tmp_path / "h", embedder=embedder) as mem:
        mem.ingest([{"id": "c1", "messages": [
            {"role": "user", "content": "How do I delete a remote git branch?"},
            {"role": "assistant", "content": "git branch -d name"},
            {"role": "user", "content": "No, that only deletes the local branch."},
            {"role": "assistant", "content": "git push origin --delete name"}],
            "feedback": [{"turn": 1, "kind": "dislike"}, {"turn": 3, "kind": "like"}]}])
        gen = MemoryGenerator(model, tok, mem)
        reply = gen.chat([{"role": "user", "content": "how to delete a branch on the remote?"}], max_new_tokens=2)
    system = reply.prompt.split("<|im_end|>")[0]
    assert "Lessons from earlier corrections" in system
    assert "only deletes the local branch" in system


def test_unknown_template_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="no prompt template 'nope'.*exchanges"):
        load_template("nope")


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="choose"):
        GeneratorConfig(choose="always")


def test_dislike_lowers_the_utility_of_the_experiences_used(tiny_lm, memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    gen = MemoryGenerator(model, tok, memory, config=GeneratorConfig(k=1))
    reply = gen.chat([{"role": "user", "content": "launch code of Zephyr?"}], max_new_tokens=3)
    used = reply.experiences[0].id
    before = memory.store.get_experiences(tenant="default", ids=[used])[used].utility
    result = gen.feedback(reply.interaction_id, "dislike")
    after = memory.store.get_experiences(tenant="default", ids=[used])[used].utility
    assert result["credited"] == 1 and result["experiences"] == 0
    assert after < before


def test_the_logged_answer_names_the_experiences_it_used(tiny_lm, memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    gen = MemoryGenerator(model, tok, memory, config=GeneratorConfig(k=2))
    reply = gen.chat([{"role": "user", "content": "launch code of Zephyr?"}], max_new_tokens=3)
    gen.feedback(reply.interaction_id, "like")
    ids = [h.id for h in reply.experiences]
    records = memory.store.retrieving_records(tenant="default", experience_ids=ids)
    assert sorted(records) == sorted(ids)
    assert all([r["id"] for r in rs] == [reply.interaction_id] for rs in records.values())
    assert records[ids[0]][0]["metadata"] == {"retrieved": ids}


def test_the_python_api_passes_text_through_the_boundary(tiny_lm, memory) -> None:  # type: ignore[no-untyped-def]
    """A lone surrogate or a NUL (what a command line's undecodable bytes or a careless caller pass) reaches neither the
    embedder nor the tokenizer: the request is cleaned as over HTTP, answered and logged cleaned."""
    model, tok = tiny_lm
    question, cleaned = "launch code of Zephyr?\ud800\x00", "launch code of Zephyr?\ufffd"
    assert [h.id for h in memory.search(question, 2)] == [h.id for h in memory.search(cleaned, 2)]
    gen = MemoryGenerator(model, tok, memory, config=GeneratorConfig(k=2))
    reply = gen.chat([{"role": "user", "content": question}], max_new_tokens=3)
    logged = memory.answer(reply.interaction_id).record["messages"][0]["content"]
    assert logged == cleaned and reply.experiences


def test_a_liked_answer_becomes_an_experience(wordy_lm, empty_memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = wordy_lm
    gen = MemoryGenerator(model, tok, empty_memory)
    reply = gen.chat([{"role": "user", "content": "What colour is the sky on Mars at noon?"}], max_new_tokens=5)
    assert gen.feedback(reply.interaction_id, "like")["experiences"] == 1
    hits = empty_memory.search("sky colour on Mars at noon", 1)
    assert hits and hits[0].response == reply.text


def test_an_empty_answer_teaches_nothing(tiny_lm, empty_memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm  # its answers strip to nothing
    gen = MemoryGenerator(model, tok, empty_memory)
    reply = gen.chat([{"role": "user", "content": "What colour is the sky on Mars at noon?"}], max_new_tokens=5)
    assert reply.text == "" and reply.completion_tokens == 5 and reply.finish_reason == "length"
    assert gen.feedback(reply.interaction_id, "like")["experiences"] == 0
    assert empty_memory.search("sky colour on Mars at noon", 1) == []


def test_a_correction_stores_the_right_answer_with_the_rejected_one(tiny_lm, empty_memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    gen = MemoryGenerator(model, tok, empty_memory)
    reply = gen.chat([{"role": "user", "content": "Which port does Redis use by default?"}], max_new_tokens=5)
    gen.feedback(reply.interaction_id, "correction", text="Redis listens on port 6379 by default.")
    hit = empty_memory.search("default Redis port", 1)[0]
    assert hit.response == "Redis listens on port 6379 by default."
    assert hit.rejected == reply.text
    assert hit.lesson == "Redis listens on port 6379 by default."


def test_feedback_on_unknown_interaction_raises(tiny_lm, memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    with pytest.raises(NotFoundError, match="no answered interaction 'nope'"):
        MemoryGenerator(model, tok, None).feedback("nope", "like")
    with pytest.raises(NotFoundError, match="no answered interaction 'nope'"):
        MemoryGenerator(model, tok, memory).feedback("nope", "like")


def test_answer_logprobs_match_a_full_forward(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    prompt = tok("Question: sky colour?\nAnswer:", return_tensors="pt")["input_ids"]
    answers = [[100, 200, 2], [300, 2], [400]]
    got = answer_logprobs(model, prompt, answers)
    for i, a in enumerate(answers):
        ids = torch.cat([prompt, torch.tensor([a])], dim=1)
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        want = sum(logp[prompt.shape[1] - 1 + j, t].item() for j, t in enumerate(a))
        assert got[i].item() == pytest.approx(want, abs=1e-3)


def test_vote_chooses_among_memory_answers(tiny_lm, memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    hits = memory.search("launch code of Zephyr?", 3)
    config = GeneratorConfig(choose="vote", vote_prior=100.0)  # the vote dominates the random model
    enc = tok("launch code of Zephyr?", return_tensors="pt")
    assert choose_answer(model, tok, enc["input_ids"], hits, config) == hits[0].response.strip()
    assert choose_answer(model, tok, enc["input_ids"], hits, replace(config, vote_max_tokens=1)) is None


def test_chat_markers_probe_chatml(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    _, tok = tiny_lm
    markers = ChatMarkers.probe(tok)
    assert markers is not None and markers.user_open == "<|im_start|>user\n"
    found = markers.last_user(tok.apply_chat_template([{"role": "user", "content": "hi there"}], tokenize=False,
                                                      add_generation_prompt=True))
    assert found is not None and found[1] == "hi there"


@pytest.mark.slow
def test_real_model_greedy_output_is_unchanged_without_memory(smollm, empty_memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = smollm
    enc = _batch(tok, ["What is the capital of France?", "Name a colour."])
    want = model.generate(**enc, max_new_tokens=10, do_sample=False)
    got = MemoryGenerator(model, tok, empty_memory).generate(**enc, max_new_tokens=10, do_sample=False)
    assert torch.equal(got, want)


@pytest.mark.slow
def test_real_model_answers_from_memory(smollm, memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = smollm
    question = [{"role": "user", "content": "What's the launch code for project Zephyr?"}]
    bare = MemoryGenerator(model, tok, None).chat(question, max_new_tokens=24)
    with_memory = MemoryGenerator(model, tok, memory).chat(question, max_new_tokens=24)
    assert "7421" not in bare.text
    assert "7421" in with_memory.text
    assert with_memory.prompt_tokens > bare.prompt_tokens


def _questions() -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": q}] for q in
            ("launch code of Zephyr?", "Which port does the staging database use, and why that one?", "hi")]


def test_chat_many_answers_each_conversation_as_chat_does(tiny_lm, memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = tiny_lm
    gen = MemoryGenerator(model, tok, memory, config=GeneratorConfig(k=2))
    batched = gen.chat_many(_questions(), max_new_tokens=6)
    single = [gen.chat(q, max_new_tokens=6) for q in _questions()]
    assert [r.prompt for r in batched] == [r.prompt for r in single]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [[h.id for h in r.experiences] for r in batched] == [[h.id for h in r.experiences] for r in single]
    assert len({r.interaction_id for r in batched}) == 3
    assert gen.feedback(batched[1].interaction_id, "like")["interaction_id"] == batched[1].interaction_id


@pytest.mark.slow
def test_real_model_batched_answers_equal_one_by_one(smollm, memory) -> None:  # type: ignore[no-untyped-def]
    model, tok = smollm
    gen = MemoryGenerator(model, tok, memory)
    batched = [r.text for r in gen.chat_many(_questions(), max_new_tokens=16)]
    assert batched == [gen.chat(q, max_new_tokens=16).text for q in _questions()]
    assert "7421" in batched[0]


@pytest.mark.parametrize("template", sorted(UNCHANGED_WHEN_EMPTY))
def test_a_template_without_memory_gives_the_conversation_back(template: str) -> None:
    """`render_messages` skips rendering these templates when the memory adds nothing: the premise, checked on the
    template itself over every shape of conversation (system notes, several turns, none, quotes and backslashes)."""
    conversations = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": 'say "x" \\ y'}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c  "}],
        [{"role": "system", "content": " s "}, {"role": "system", "content": "t"}, {"role": "user", "content": "u\n"}],
        [{"role": "assistant", "content": "x"}], [],
    ]
    for fact_place in ("question", "system"):
        empty = Conditioning([], [], 0, [], [], fact_place)
        assert not empty.adds_text
        for messages in conversations:
            rendered = json.loads(load_template(template).render(
                messages=messages, experiences=[], lessons=[], answers=[], facts=[], fact_place=fact_place))
            assert rendered == messages
            got = render_messages(messages, empty, template)
            assert got == messages and got is not messages
    lesson = Conditioning([], ["Say please."], 3, [], [], "question")
    assert lesson.adds_text and render_messages(conversations[0], lesson, template) != conversations[0]
