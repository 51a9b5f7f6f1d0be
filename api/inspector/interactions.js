// Interactions: the latest served answers with their feedback; judge one from here (the API's feedback route).
import {get, post} from "./api.js";
import {clip, h, num, section, short, when} from "./dom.js";

export const title = "Interactions";
const PAGE = 20;
let offset = 0;

export async function render(root, params, ctx) {
  const body = h("div", {});
  root.append(section("Latest answers", body));
  await load(body, ctx);
}

async function load(body, ctx) {
  const page = await get("/v1/interactions", {limit: PAGE, offset});
  const rows = page.data.map((a) => {
    const row = h("tr", {"data-id": a.id},
      h("td", {class: "nowrap", title: when(a.answered_at)}, short(a.answered_at)), h("td", {}, a.user || "–"),
      h("td", {}, clip(a.request)), h("td", {}, clip(a.answer)),
      h("td", {}, h("span", {class: `badge s-${a.status}`}, a.status)),
      h("td", {class: "feedback"}, a.feedback.length ? a.feedback.map(badge) : h("span", {class: "muted"}, "none")),
      h("td", {}, a.experiences.map((id) => [h("a", {href: `#/memories/${id}`}, String(id)), " "])),
      h("td", {}, feedbackControls(a.id, ctx, () => load(body, ctx))));
    return row;
  });
  const last = Math.min(offset + page.data.length, page.total);
  body.replaceChildren(page.data.length ? h("table", {class: "data", id: "answers"}, h("thead", {}, h("tr", {},
    ["answered", "user", "request", "answer", "status", "feedback", "memories used", "judge"]
      .map((c) => h("th", {scope: "col"}, c)))), h("tbody", {}, rows))
    : h("p", {class: "muted"}, "No answers served yet."),
  h("div", {class: "pager"},
    h("button", {type: "button", disabled: offset === 0, onclick: () => { offset = Math.max(0, offset - PAGE); load(body, ctx); }},
      "← Newer"),
    h("span", {class: "count"}, page.total ? `${offset + 1}–${last} of ${num(page.total)}` : ""),
    h("button", {type: "button", disabled: last >= page.total, onclick: () => { offset += PAGE; load(body, ctx); }},
      "Older →")));
}

function badge(f) {
  const label = f.kind === "rating" ? `rating ${f.value}` : f.kind;
  return h("span", {class: `badge k-${f.kind}`, title: f.text || label}, label);
}

/** Like, dislike, a 1–5 rating or a correction of one served answer, sent to its feedback route. */
export function feedbackControls(id, ctx, done) {
  const send = async (body) => {
    const result = await post(`/v1/interactions/${encodeURIComponent(id)}/feedback`, body);
    ctx.say(result.duplicate ? "Already counted." : `Judged: ${result.credited} memory(ies) credited, ` +
      `${result.experiences} new, ${result.merged} merged.`);
    await done();
  };
  const rating = h("select", {"aria-label": "rating", class: "rating"},
    h("option", {value: ""}, "rate…"), [1, 2, 3, 4, 5].map((v) => h("option", {value: String(v)}, `${v}`)));
  rating.addEventListener("change", () => rating.value && send({kind: "rating", value: Number(rating.value)}));
  const fix = h("input", {type: "text", "aria-label": "the right answer", placeholder: "the right answer"});
  const correct = h("form", {class: "correct", hidden: true, onsubmit: (e) => {
    e.preventDefault();
    if (fix.value.trim()) send({kind: "correction", text: fix.value.trim()});
  }}, fix, h("button", {type: "submit"}, "Send"));
  return h("div", {class: "judge"},
    h("button", {type: "button", class: "like", onclick: () => send({kind: "like"})}, "Like"),
    h("button", {type: "button", class: "dislike", onclick: () => send({kind: "dislike"})}, "Dislike"),
    rating,
    h("button", {type: "button", class: "correct-open", onclick: () => { correct.hidden = !correct.hidden; fix.focus(); }},
      "Correct…"), correct);
}
