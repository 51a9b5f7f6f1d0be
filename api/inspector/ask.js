// Ask: what the memory would put in front of the model for a request, and (optionally) the answers with and
// without it, side by side. The answer with memory is a real chat completion: logged, and open to feedback.
import {get, post} from "./api.js";
import {clip, h, num, section} from "./dom.js";
import {parts, partsLegend} from "./plots.js";
import {feedbackControls} from "./interactions.js";

export const title = "Ask";
let last = {q: "", answer: false};

export async function render(root, params, ctx) {
  const q = h("textarea", {id: "ask-query", rows: 2, "aria-label": "a request", value: last.q,
    placeholder: "a request, as a user would send it", onkeydown: (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
    }});
  const answer = h("input", {type: "checkbox", id: "ask-answer", checked: last.answer});
  const out = h("div", {id: "ask-results"});
  const form = h("form", {class: "toolbar", onsubmit: async (e) => {
    e.preventDefault();
    last = {q: q.value.trim(), answer: answer.checked};
    if (!last.q) return;
    out.replaceChildren(h("p", {class: "muted"}, "Retrieving…"));
    await show(out, last, ctx);
  }}, q, h("label", {class: "check"}, answer, " also answer, with and without memory"),
  h("button", {type: "submit"}, "Ask"));
  root.append(section("Ask the memory", form, out));
  if (last.q) await show(out, last, ctx);
}

async function show(out, {q, answer}, ctx) {
  const preview = await get("/v1/memory/prompt", {q});
  const blocks = [hits(preview), section(`The prompt the model sees (${num(preview.prompt_tokens)} tokens, ` +
    `${num(preview.memory_tokens)} from memory)`, h("pre", {class: "prompt", id: "ask-prompt"}, preview.prompt))];
  out.replaceChildren(...blocks);
  if (!answer) return;
  const pending = h("p", {class: "muted"}, "Answering…");
  out.append(pending);
  // one after the other: a key may have a single generation slot (LOGMEM_MAX_CONCURRENT=1)
  const withMemory = await post("/v1/chat/completions",
    {model: "default", max_tokens: 64, messages: [{role: "user", content: q}]});
  const without = await post("/v1/memory/baseline", {q, max_tokens: 64});
  pending.replaceWith(h("div", {class: "two"},
    section("With memory", h("pre", {class: "text", id: "answer-with"}, withMemory.choices[0].message.content),
      h("p", {class: "muted"}, `interaction ${withMemory.id}, ${withMemory.logmem.experiences.length} memories, ` +
        `adapter ${withMemory.logmem.adapter || "none"}`),
      feedbackControls(withMemory.id, ctx, () => ctx.say("Thanks: the memories it used were credited."))),
    section("Without memory", h("pre", {class: "text", id: "answer-without"}, without.text),
      h("p", {class: "muted"}, `nothing logged, adapter ${without.adapter || "none"}`))));
}

function hits(preview) {
  if (!preview.hits.length) return section("Retrieved", h("p", {class: "muted"}, "No memory matches this request."));
  const rows = preview.hits.map((hit) => h("tr", {class: hit.in_prompt ? "" : "out"},
    h("td", {class: "num"}, String(hit.rank)), h("td", {}, hit.in_prompt ? "yes" : "no (budget)"),
    h("td", {class: "num"}, h("a", {href: `#/memories/${hit.id}`}, String(hit.id))),
    h("td", {}, clip(hit.trigger)), h("td", {}, clip(hit.response)),
    h("td", {class: "num"}, num(hit.score)), h("td", {class: "num"}, num(hit.sim)), h("td", {class: "num"}, num(hit.util)),
    h("td", {class: "num"}, num(hit.rec)), h("td", {class: "num"}, num(hit.cos)), h("td", {}, parts(hit))));
  return section("Retrieved, in MMR order", h("table", {class: "data", id: "hits"}, h("thead", {}, h("tr", {},
    ["rank", "in prompt", "id", "trigger", "response", "score", "similarity", "utility", "recency", "cosine", "parts"]
      .map((c) => h("th", {scope: "col"}, c)))), h("tbody", {}, rows)), partsLegend(),
  h("p", {class: "muted"}, "score = similarity + utility + recency (each weighted); MMR then picks diverse ones."));
}
