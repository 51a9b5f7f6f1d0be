"""The inspector page in a real browser (Debian's headless Chromium, driven by playwright) against the real service
(uvicorn on a loopback port, the real embedder, faiss and SQLite, the tiny model): every view opens on a tenant's
data; search, sorting and paging; rating and correcting an answer; activating and rolling back adapters; a canary's
panel (both arms, the decision, pin, promote); forgetting a user; memory text that looks like markup stays text. With
LOGMEM_SCREENSHOTS=<folder> each view is saved there as a PNG (the README's come from
`LOGMEM_SCREENSHOTS=docs/inspector`)."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from logmem.api.answering import Ask
from logmem.api.app import create_app
from logmem.api.runtime import Caller, Runtime
from servers import serving

CHROMIUM = Path("/usr/bin/chromium")
REQUIRED = bool(os.environ.get("LOGMEM_CI") or os.environ.get("CI"))  # CI installs chromium: never skip there
SHOTS = os.environ.get("LOGMEM_SCREENSHOTS")
XSS = "<img src=x onerror=alert(1)>"
REDIS = ("Which port does Redis use by default?", "Redis listens on port 6379.")
LOGS = [  # (user, request, answer, feedback on the answer)
    ("ann", *REDIS, {"kind": "like"}),
    ("ann", "How do I list the files in a folder on Linux, hidden ones included?", "Run `ls -la` in it.",
     {"kind": "like"}),
    ("bob", "What is the capital of Australia?", "Canberra.", {"kind": "rating", "value": 5}),
    ("bob", "How do I undo the last git commit but keep its changes?", "git reset --soft HEAD~1", {"kind": "like"}),
    ("cy", "What colour is the sky on Mars at noon?", "Butterscotch: a pale yellow-brown.", {"kind": "copy"}),
    ("cy", "Convert 100 degrees Fahrenheit to Celsius.", "About 37.8 °C.", {"kind": "like"}),
    ("dee", "Which port does PostgreSQL listen on by default?", "5432.", {"kind": "like"}),  # after a correction
    ("mallory", XSS, "<script>alert(2)</script><b>not bold</b>", {"kind": "like"}),
]
NOVEL = "Who wrote the novel Middlemarch?"
# served by the runtime; the first three judged (a dislike, a like, a rating of 2), gil's and hal's left for the page
ASKED = [("eve", REDIS[0]), ("eve", "What is the capital of Australia?"), ("fay", XSS), ("gil", REDIS[0]),
         ("hal", NOVEL)]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        reason = f"no {CHROMIUM}: apt-get install chromium (the browser tests drive Debian's Chromium)"
        if REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: make setup")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


def _lora(base: Any, seed: int, folder: Path) -> str:
    """A real (random) LoRA adapter of the tiny model, saved where the service can load it."""
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(folder)
    return str(folder)


def populate(runtime: Runtime, base: Any, folder: Path, *, job: bool = False) -> dict[str, Any]:
    """Tenant acme's logs (users ann, bob, cy, dee, mallory), answers served to eve, fay, gil and hal (three judged),
    two adapters registered as promoted (random LoRA weights, no gate; the first covers bob's experiences and is
    active), and with `job` a real consolidation job (one training step, judged by the real gate)."""
    records = [{"id": f"log{i}", "user": user, "messages": [{"role": "user", "content": q},
                                                            {"role": "assistant", "content": a}],
                "feedback": [{"turn": 1, **feedback}]} for i, (user, q, a, feedback) in enumerate(LOGS)]
    dee = next(r for r in records if r["user"] == "dee")  # a wrong answer first, then the user's correction
    dee["messages"][1:1] = [{"role": "assistant", "content": "3306."},
                            {"role": "user", "content": "No, it should be 5432: 3306 is MySQL's port."}]
    dee["feedback"][0]["turn"] = 3
    report = runtime.ingest(records, tenant="acme")
    assert report.experiences == len(LOGS), report
    caller = Caller("acme", None)
    answers = [runtime.chat(caller, [{"role": "user", "content": q}], user=user, max_tokens=8).reply.interaction_id
               for user, q in ASKED]
    runtime.feedback(caller, answers[0], "dislike")
    runtime.feedback(caller, answers[1], "like")
    runtime.feedback(caller, answers[2], "rating", value=2)
    ids = {e.trigger: e.id for e in runtime.memory.iter_experiences("acme")}
    bobs = [ids[q] for user, q, *_ in LOGS if user == "bob"]
    adapters = [runtime.memory.register_adapter(
        tenant="acme", base_model="tiny", method="sft", seed=seed, promoted=True, covered=covered,
        metrics={"gate": "none: a random LoRA registered by the test", "train": len(covered)},
        path=_lora(base, seed, folder / f"lora{seed}")) for seed, covered in ((1, bobs), (2, [ids[REDIS[0]]]))]
    runtime.memory.activate_adapter(adapters[0], tenant="acme")
    if job:
        runtime.submit_consolidation(caller, {"max_steps": 1})
        assert runtime.run_next_job() is not None
    key, _ = runtime.store.create_key(tenant="acme")
    return {"key": key, "ids": ids, "answers": answers, "adapters": adapters, "runtime": runtime}


@pytest.fixture
def site(tmp_path: Path, runtime_for: Any, wordy_lm: Any, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The service over a populated acme, served on a free loopback port (parametrized indirectly with
    {"job": True}: with a real consolidation job)."""
    runtime = runtime_for(tmp_path / "home", max_tokens=64)
    data = populate(runtime, wordy_lm[0], tmp_path, **getattr(request, "param", {}))
    with serving(create_app(runtime=runtime)) as url:
        yield {**data, "url": url}


@pytest.fixture
def page(browser: Any, site: dict[str, Any]) -> Iterator[Any]:
    """A laptop-sized page of a fresh browser session; no dialog may open, no script or policy error may occur."""
    context = browser.new_context(viewport={"width": 1366, "height": 860})
    page = context.new_page()
    page.set_default_timeout(15_000)
    trouble: list[str] = []
    page.on("dialog", lambda d: (trouble.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("pageerror", lambda e: trouble.append(f"script error: {e}"))
    page.on("console", lambda m: trouble.append(f"console: {m.text}") if m.type == "error" else None)
    page.trouble = trouble
    yield page
    context.close()
    assert trouble == [], trouble  # a CSP violation shows here as a console error


def expect(target: Any) -> Any:
    """playwright's waiting assertions (the page's policy forbids eval, so no `wait_for_function` strings)."""
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=15_000)  # a loaded CI machine: as patient as the page's own waits
    return playwright_expect(target)


def sign_in(page: Any, site: dict[str, Any], view: str = "overview") -> None:
    page.goto(f"{site['url']}/#/{view}")
    page.fill("#key", site["key"])
    page.click("form.login button[type=submit]")
    page.wait_for_selector(f"#view-{view.split('/')[0]}[data-ready]")
    assert page.text_content("#tenant") == "acme"


def go(page: Any, hash_: str, view: str) -> None:
    page.evaluate("h => { location.hash = h; }", hash_)
    page.wait_for_selector(f"#view-{view}[data-ready]")


def shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def rows(page: Any, table: str) -> list[list[str]]:
    return page.eval_on_selector_all(f"{table} tbody tr",
                                     "trs => trs.map(tr => [...tr.cells].map(td => td.textContent.trim()))")


# --- every view ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("site", [{"job": True}], indirect=True, ids=["with a job"])
def test_every_view_opens_on_the_tenants_data(page: Any, site: dict[str, Any]) -> None:
    runtime = site["runtime"]
    stats = runtime.stats(Caller("acme", None))
    sign_in(page, site)
    tiles = page.eval_on_selector_all(".tile", "ts => ts.map(t => t.querySelector('.value').textContent)")
    assert tiles[:3] == [str(stats.interactions), str(stats.experiences), str(stats.index["acme"]["size"])]
    assert tiles[4] == site["adapters"][0]
    served = runtime.explain_mode(Caller("acme", None))  # the job's serving choice, over its held-out slice
    assert tiles[5] == served.mode and page.locator("#serving-reason").text_content() == served.reason
    assert [r[0] for r in rows(page, "#serving-slices")] == [s["name"] for s in served.slices] == ["new"]
    for kind in ("like", "dislike", "rating"):  # today's bar of each kind
        assert page.locator(f"svg.plot rect.k-{kind}").count() == 1, kind
    assert page.locator("svg.plot rect.bar").count() == 10  # the utility histogram's bins
    shot(page, "overview")

    go(page, "#/memories", "memories")
    assert len(rows(page, "#memories")) == stats.experiences
    shot(page, "memories")

    redis = site["ids"][REDIS[0]]
    go(page, f"#/memories/{redis}", "memories")
    assert page.text_content("#memory-trigger") == REDIS[0]
    assert page.text_content("#memory-response") == REDIS[1]
    _, uses, _ = runtime.experience_history(Caller("acme", None), redis)
    assert site["answers"][0] in [u["id"] for u in uses]  # eve's answer it conditioned, disliked
    assert page.locator("svg.plot circle.dot").count() == len(uses)
    assert site["adapters"][1] in page.text_content(".facts")  # the adapter trained on it
    shot(page, "memory")
    corrected = site["ids"]["Which port does PostgreSQL listen on by default?"]
    go(page, f"#/memories/{corrected}", "memories")
    assert page.text_content("#memory-lesson") == "No, it should be 5432: 3306 is MySQL's port."
    assert page.text_content("#memory-rejected") == "3306."
    shot(page, "memory-corrected")

    go(page, "#/ask", "ask")
    page.fill("#ask-query", REDIS[0])
    page.check("#ask-answer")
    page.click("#view-ask button[type=submit]")
    page.wait_for_selector("#answer-without")
    hit = rows(page, "#hits")[0]
    assert (hit[0], hit[1], hit[2], hit[4]) == ("1", "yes", str(redis), REDIS[1])
    assert REDIS[1] in page.text_content("#ask-prompt")
    assert page.text_content("#answer-with") and page.text_content("#answer-without") is not None
    shot(page, "ask")

    go(page, "#/interactions", "interactions")
    served = rows(page, "#answers")
    assert len(served) == len(ASKED) + 1  # and the one the Ask view just served
    assert [r[1] for r in served[1:]] == [user for user, _ in reversed(ASKED)]
    shot(page, "interactions")

    go(page, "#/consolidation", "consolidation")
    (job,) = rows(page, "#job-table")
    assert job[1] in ("succeeded", "rejected") and "held-out NLL" in job[5]
    assert "steps run1" in job[5] and "steps planned1" in job[5] and "stopped bymax_steps" in job[5]
    assert page.text_content("#serving") == f"adapter {site['adapters'][0]}"
    shot(page, "consolidation")

    go(page, "#/erasure", "erasure")
    assert {r[0] for r in rows(page, "#user-table")} == {user for user, *_ in LOGS + ASKED}
    shot(page, "erasure")


def test_search_sort_and_page_through_the_memories(page: Any, site: dict[str, Any]) -> None:
    site["runtime"].ingest([{"id": f"fact{i}", "user": "gus", "feedback": [{"turn": 1, "kind": "like"}],
                             "messages": [{"role": "user", "content": f"What is {i} times {i + 7}?"},
                                          {"role": "assistant", "content": str(i * (i + 7))}]} for i in range(20)],
                           tenant="acme")
    total = len(LOGS) + 20
    sign_in(page, site)
    page.keyboard.press("2")  # the keyboard way to the second view
    page.wait_for_selector("#view-memories[data-ready]")
    assert page.text_content(".pager .count") == f"1–25 of {total}"
    page.click("text=Next →")
    expect(page.locator(".pager .count")).to_have_text(f"26–{total} of {total}")
    assert len(rows(page, "#memories")) == total - 25

    page.keyboard.press("/")  # the keyboard way to the search box
    expect(page.locator("#memory-search")).to_be_focused()
    page.keyboard.type("REDIS")
    page.keyboard.press("Enter")
    expect(page.locator(".pager .count")).to_have_text("1–1 of 1")
    (found,) = rows(page, "#memories")
    assert found[1:3] == list(REDIS)

    page.fill("#memory-search", "times")
    page.keyboard.press("Enter")
    expect(page.locator(".pager .count")).to_have_text("1–20 of 20")
    page.click("th >> text=id")  # sort by id: descending first, then ascending
    page.wait_for_selector("th[aria-sort=descending] >> text=id")
    down = [int(r[0]) for r in rows(page, "#memories")]
    page.click("th >> text=id")
    page.wait_for_selector("th[aria-sort=ascending] >> text=id")
    up = [int(r[0]) for r in rows(page, "#memories")]
    assert down == sorted(down, reverse=True) and up == sorted(up) and set(up) == set(down)


# --- judging answers -----------------------------------------------------------------------------------------
def test_rating_an_answer_changes_the_utility_of_the_memories_it_used(page: Any, site: dict[str, Any]) -> None:
    runtime, redis = site["runtime"], site["ids"][REDIS[0]]
    answer = site["answers"][3]  # gil's Redis question, not judged yet
    assert redis in [e["id"] for e in runtime.memory.answer(answer, tenant="acme").served["experiences"]]
    sign_in(page, site, f"memories/{redis}")
    before = float(page.text_content("#memory-utility"))
    dots = page.locator("svg.plot circle.dot").count()

    go(page, "#/interactions", "interactions")
    row = page.locator(f"tr[data-id='{answer}']")
    assert row.locator("td.feedback").text_content() == "none"
    row.locator("select.rating").select_option("1")
    page.wait_for_selector(f"tr[data-id='{answer}'] .badge.k-rating")
    assert page.locator(f"tr[data-id='{answer}'] td.feedback").text_content() == "rating 1"

    go(page, f"#/memories/{redis}", "memories")
    after = float(page.text_content("#memory-utility"))
    assert after < before
    assert after == pytest.approx(runtime.memory.experience(redis, tenant="acme").utility, abs=1e-3)
    assert page.locator("svg.plot circle.dot").count() == dots + 1  # gil's answer, rated 1


def test_correcting_an_answer_from_the_page_teaches_the_memory(page: Any, site: dict[str, Any]) -> None:
    answer = site["answers"][4]  # hal's question, which no memory answers
    said = site["runtime"].memory.answer(answer, tenant="acme").record["messages"][1]["content"]
    sign_in(page, site, "interactions")
    row = page.locator(f"tr[data-id='{answer}']")
    expect(row.locator("form.correct")).to_be_hidden()
    row.locator("button.correct-open").click()
    expect(row.locator("form.correct input")).to_be_focused()
    page.keyboard.type("George Eliot (Mary Ann Evans).")
    page.keyboard.press("Enter")
    page.wait_for_selector(f"tr[data-id='{answer}'] .badge.k-correction")

    go(page, "#/memories", "memories")
    page.fill("#memory-search", "George Eliot")
    page.keyboard.press("Enter")
    expect(page.locator(".pager .count")).to_have_text("1–1 of 1")
    page.click("#memories tbody a")
    page.wait_for_selector("#memory-rejected")
    assert page.text_content("#memory-trigger") == NOVEL
    assert page.text_content("#memory-response") == "George Eliot (Mary Ann Evans)."
    assert page.text_content("#memory-rejected") == said  # the model's answer, kept as the rejected one


# --- adapters ------------------------------------------------------------------------------------------------
def test_activate_and_roll_back_an_adapter(page: Any, site: dict[str, Any]) -> None:
    runtime = site["runtime"]
    first, second = site["adapters"]
    sign_in(page, site, "consolidation")
    assert page.text_content("#serving") == f"adapter {first}"

    page.click(f"tr[data-version='{second}'] button.activate")
    expect(page.locator("#serving")).to_have_text(f"adapter {second}")
    assert runtime.memory.active_adapter("acme").version == second
    assert page.locator(f"tr[data-version='{first}'] button.activate").count() == 1
    shot(page, "consolidation-activated")

    page.click("#rollback")  # back to the one active before
    expect(page.locator("#serving")).to_have_text(f"adapter {first}")
    assert runtime.memory.active_adapter("acme").version == first
    page.click("#rollback")
    expect(page.locator("#serving")).to_have_text("the base model")
    assert runtime.memory.active_adapter("acme") is None
    assert page.is_disabled("#rollback")


def test_the_canary_panel_shows_both_arms_and_promotes(page: Any, site: dict[str, Any]) -> None:
    runtime, (first, second) = site["runtime"], site["adapters"]
    canary = runtime.memory.canaries.start(second, tenant="acme", share=0.5)
    rated = {"canary": 0, "current": 0}
    for i in range(12):  # real answers, rated: liked on the canary's arm, disliked on the current one
        answer = runtime.answer(Caller("acme", None), Ask([{"role": "user", "content": f"Reset device {i}?"}],
                                                          max_tokens=4))
        iid = answer.reply.interaction_id
        arm = runtime.memory.answer(iid, tenant="acme").served["canary"]["arm"]
        runtime.feedback(Caller("acme", None), iid, "like" if arm == "canary" else "dislike")
        rated[arm] += 1
    assert rated["canary"] and rated["current"]
    sign_in(page, site, "consolidation")
    arms = {r[0]: r for r in rows(page, "#canary-arms")}
    assert arms["canary"][1:] == [second, str(rated["canary"]), str(rated["canary"]), "100.0 %"]
    assert arms["current"][1:] == [first, str(rated["current"]), "0", "0.0 %"]
    assert page.text_content("#canary-verdict") == "continue"
    assert "waiting for 50 rated outcomes" in page.text_content("#canary-reason")
    assert page.text_content("#e-better").strip().endswith("of 20")
    assert page.locator("#canary-rates polyline").count() == 2  # both arms' rates over time
    shot(page, "consolidation-canary")

    page.click("#canary-pin")
    expect(page.locator("#canary-pin")).to_have_text("Unpin")
    assert runtime.memory.canaries.live("acme").pinned
    page.click("#canary-promote")
    expect(page.locator("#serving")).to_have_text(f"adapter {second}")
    assert runtime.memory.active_adapter("acme").version == second
    assert runtime.store.get_canary(tenant="acme", canary_id=canary.id).status == "promoted"
    (ended,) = rows(page, "#canary-history")
    assert ended[:3] == [str(canary.id), second, "promoted"] and ended[-1] == "promoted by an operator"
    assert page.locator("#no-canary").count() == 1


# --- erasure -------------------------------------------------------------------------------------------------
def test_forget_a_user_and_see_them_gone(page: Any, site: dict[str, Any]) -> None:
    runtime, first = site["runtime"], site["adapters"][0]  # the first adapter was trained on bob's experiences
    sign_in(page, site, "erasure")
    page.click("tr[data-user=bob] button.danger")
    page.click("tr[data-user=bob] button >> text=Yes, forget")
    page.wait_for_selector("#erasure-result .done")
    report = page.text_content("#erasure-result")
    assert "Forgot bob" in report and "2 interaction(s)" in report and "2 experience(s)" in report
    assert f"adapters marked stale: {first}" in report
    expect(page.locator("tr[data-user=bob]")).to_have_count(0)
    assert "bob" not in [r[0] for r in rows(page, "#user-table")]
    shot(page, "erasure-done")
    assert runtime.users(Caller("acme", None)) and "bob" not in {u.user for u in runtime.users(Caller("acme", None))}

    go(page, "#/memories", "memories")
    page.fill("#memory-search", "Canberra")
    page.keyboard.press("Enter")
    page.wait_for_selector("text=No memory holds “Canberra”.")

    go(page, "#/consolidation", "consolidation")
    assert first in page.text_content("#stale")
    page.click("#rebuild")
    expect(page.locator("#job-table tbody tr")).to_have_count(1)
    assert rows(page, "#job-table")[0][1] == "queued"
    assert runtime.store.jobs(tenant="acme")[-1].params["rebuild"] is True
    shot(page, "consolidation-stale")


# --- safety --------------------------------------------------------------------------------------------------
def test_memory_text_that_looks_like_markup_is_shown_as_text(page: Any, site: dict[str, Any]) -> None:
    mallory = site["ids"][XSS]
    sign_in(page, site, "memories")
    assert XSS in page.text_content("#memories")
    go(page, f"#/memories/{mallory}", "memories")
    assert page.text_content("#memory-trigger") == XSS
    assert page.text_content("#memory-response") == "<script>alert(2)</script><b>not bold</b>"
    go(page, "#/ask", "ask")
    page.fill("#ask-query", XSS)
    page.click("#view-ask button[type=submit]")
    page.wait_for_selector("#hits")
    assert XSS in page.text_content("#hits") and XSS in page.text_content("#ask-prompt")
    go(page, "#/interactions", "interactions")
    assert XSS in page.text_content("#answers")  # fay's request
    page.wait_for_timeout(300)  # an image that failed to load would have fired its onerror by now
    # no element was made from the text: no image, no script but the page's own, nothing bold
    assert page.locator("img").count() == 0 and page.locator("b").count() == 0
    assert page.eval_on_selector_all("script", "ss => ss.map(s => s.getAttribute('src'))") == ["/inspector/main.js"]
    # (the page fixture asserts that no dialog opened)


def test_the_key_is_asked_once_per_session_and_sent_as_a_bearer_header(browser: Any, page: Any,
                                                                       site: dict[str, Any]) -> None:
    page.goto(site["url"])
    page.fill("#key", "lm-wrong")
    page.click("form.login button[type=submit]")
    page.wait_for_selector("text=That key is not valid")
    page.trouble.clear()  # the refused request's 401 is logged by the browser as a console error
    sent: list[str | None] = []
    page.on("request", lambda r: sent.append(r.headers.get("authorization")) if "/v1/" in r.url else None)
    sign_in(page, site)
    page.reload()
    page.wait_for_selector("#view-overview[data-ready]")  # still signed in: not asked again
    assert sent and set(sent) == {f"Bearer {site['key']}"}
    assert page.evaluate("Object.keys(localStorage).length") == 0  # kept for the session only
    assert site["key"] in page.evaluate("sessionStorage.getItem('logmem.inspector')")

    other = browser.new_context()  # another browser session is asked for the key
    try:
        fresh = other.new_page()
        fresh.goto(site["url"])
        fresh.wait_for_selector("#key")
    finally:
        other.close()
    page.click("text=Sign out")
    page.wait_for_selector("#key")
    assert page.evaluate("sessionStorage.getItem('logmem.inspector')") is None
    assert re.fullmatch(r"Sign in", page.text_content("form.login h1"))


def test_ask_in_front_of_an_upstream_answers_through_it(browser: Any, tmp_path: Path, runtime_for: Any,
                                                        tiny_folder: Path, upstream: dict[str, Any]) -> None:
    """The Ask view of a service in front of an upstream (the session's second, real logmem server): the memory's
    hits and the prompt, the answer with memory (logged) and without (nothing logged), no weights loaded here."""
    import httpx

    runtime = runtime_for(tmp_path / "home", model=str(tiny_folder), upstream=upstream["url"],
                          upstream_key=upstream["key"])
    records = [{"id": f"log{i}", "user": user, "messages": [{"role": "user", "content": q},
                                                            {"role": "assistant", "content": a}],
                "feedback": [{"turn": 1, **feedback}]} for i, (user, q, a, feedback) in enumerate(LOGS[:3])]
    runtime.ingest(records, tenant="acme")
    key, _ = runtime.store.create_key(tenant="acme")
    context = browser.new_context(viewport={"width": 1366, "height": 860})
    page = context.new_page()
    page.set_default_timeout(60_000)  # two answers through a second server on a loaded machine
    trouble: list[str] = []
    page.on("pageerror", lambda e: trouble.append(f"script error: {e}"))
    page.on("console", lambda m: trouble.append(f"console: {m.text}") if m.type == "error" else None)
    try:
        with serving(create_app(runtime=runtime)) as url:
            sign_in(page, {"url": url, "key": key})
            go(page, "#/ask", "ask")
            page.fill("#ask-query", REDIS[0])
            page.check("#ask-answer")
            page.click("#view-ask button[type=submit]")
            page.wait_for_selector("#answer-without")
            assert rows(page, "#hits")[0][4] == REDIS[1] and REDIS[1] in page.text_content("#ask-prompt")
            direct = httpx.post(f"{upstream['url']}/chat/completions", timeout=120,
                                headers={"Authorization": f"Bearer {upstream['key']}"},
                                json={"model": "tiny-llama", "max_tokens": 64,
                                      "messages": [{"role": "user", "content": REDIS[0]}]}).json()
            assert page.text_content("#answer-without") == direct["choices"][0]["message"]["content"]
            assert page.text_content("#answer-with")
            answers = runtime.answers_page(Caller("acme", None))[1]
            assert [a.record["messages"][0]["content"] for a in answers] == [REDIS[0]]  # the one with memory
            shot(page, "ask-upstream")
    finally:
        context.close()
    assert trouble == [], trouble
    assert runtime._loaded is None  # the proxy never loaded the model's weights
