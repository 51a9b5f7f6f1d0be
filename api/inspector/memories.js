// Memories: the experiences as a sortable, searchable, paginated table, and one experience's page.
import {del, get} from "./api.js";
import {ageDays, clip, confirmButton, facts, h, num, section, short, when} from "./dom.js";
import {outcomes, parts} from "./plots.js";

export const title = "Memories";
const COLUMNS = [["id", "id"], [null, "trigger"], [null, "response"], ["utility", "utility"], ["uses", "uses"],
  ["support", "support"], ["age", "last seen"], [null, "consolidated in"]];
const PAGE = 25;
const state = {text: "", sort: "utility", order: "desc", offset: 0};

export async function render(root, params, ctx) {
  if (params[0]) return detail(root, Number(params[0]), ctx);
  const search = h("input", {type: "search", id: "memory-search", "data-search": "", value: state.text,
    placeholder: "text in a trigger, response, lesson or rejected answer", "aria-label": "search the memories"});
  const results = h("div", {class: "results"});
  const form = h("form", {class: "toolbar", role: "search", onsubmit: (e) => {
    e.preventDefault();
    state.text = search.value.trim();
    state.offset = 0;
    load(results, ctx);
  }}, search, h("button", {type: "submit"}, "Search"));
  root.append(section("Memories", form, results));
  await load(results, ctx);
}

async function load(results, ctx) {
  const query = {sort: state.sort, order: state.order, limit: PAGE, offset: state.offset};
  const page = state.text ? await get("/v1/memory/find", {...query, text: state.text})
    : await get("/v1/memory/experiences", query);
  const head = h("tr", {}, COLUMNS.map(([key, label]) => {
    if (!key) return h("th", {scope: "col"}, label);
    const on = state.sort === key;
    return h("th", {scope: "col", "aria-sort": on ? (state.order === "desc" ? "descending" : "ascending") : "none"},
      h("button", {type: "button", class: "sort", onclick: () => {
        state.order = on && state.order === "desc" ? "asc" : "desc";
        state.sort = key;
        state.offset = 0;
        load(results, ctx);
      }}, label, on ? (state.order === "desc" ? " ▼" : " ▲") : ""));
  }));
  const rows = page.data.map((e) => h("tr", {},
    h("td", {class: "num"}, h("a", {href: `#/memories/${e.id}`}, String(e.id))),
    h("td", {}, h("a", {href: `#/memories/${e.id}`, class: "plain"}, clip(e.trigger))),
    h("td", {}, clip(e.response)),
    h("td", {class: "num"}, utilityCell(e.utility)),
    h("td", {class: "num"}, num(e.uses)), h("td", {class: "num"}, num(e.support)),
    h("td", {class: "num"}, ageDays(e.last_seen_at)), h("td", {}, e.consolidated_in || "–")));
  const last = Math.min(page.offset + page.data.length, page.total);
  const pager = h("div", {class: "pager"},
    h("button", {type: "button", disabled: page.offset === 0, onclick: () => {
      state.offset = Math.max(0, state.offset - PAGE); load(results, ctx);
    }}, "← Previous"),
    h("span", {class: "count"}, page.total ? `${page.offset + 1}–${last} of ${num(page.total)}` : "none"),
    h("button", {type: "button", disabled: last >= page.total, onclick: () => {
      state.offset += PAGE; load(results, ctx);
    }}, "Next →"));
  results.replaceChildren(
    page.data.length ? h("table", {class: "data", id: "memories"}, h("thead", {}, head), h("tbody", {}, rows))
      : h("p", {class: "muted"}, state.text ? `No memory holds “${state.text}”.` : "The memory is empty."),
    pager);
}

export function utilityCell(u) {
  return h("span", {class: "util"}, h("meter", {min: 0, max: 1, low: 0.4, high: 0.6, optimum: 1, value: u,
    "aria-hidden": "true"}), ` ${u.toFixed(3)}`);
}

async function detail(root, id, ctx) {
  const {experience: e, uses, adapters} = await get(`/v1/memory/experiences/${id}/history`);
  const text = (label, value, cls) => [h("h3", {}, label),
    value ? h("pre", {class: `text ${cls || ""}`, id: `memory-${label.toLowerCase().replace(/ .*/, "")}`}, value)
      : h("p", {class: "muted"}, "none")];
  const forget = confirmButton("Forget", "Forget this memory, its vector and the logs it came from?", async () => {
    const {removed} = await del(`/v1/memory/experiences/${id}`);
    ctx.say(`Forgot memory ${id}: ${removed.experiences} experience, ${removed.interactions} interaction(s).`);
    ctx.go("#/memories");
  });
  root.append(
    h("p", {}, h("a", {href: "#/memories"}, "← all memories")),
    h("div", {class: "two wide-left"},
      section(`Memory ${e.id}`, text("Trigger", e.trigger), text("Response", e.response),
        text("Lesson", e.lesson), text("Rejected answer", e.rejected, "rejected")),
      section("Figures", facts([["utility", h("span", {id: "memory-utility"}, num(e.utility))],
        ["uses", num(e.uses)], ["support", num(e.support)], ["first seen", when(e.created_at)],
        ["last seen", when(e.last_seen_at)], ["consolidated in", e.consolidated_in || "–"],
        ["adapters trained on it", adapters.length ? adapters.map((a) =>
          h("span", {class: `badge ${a.status}`}, `${a.version} ${a.status}${a.active ? ", active" : ""}`))
          : "none"]]),
      h("div", {class: "actions"}, forget))),
    section("Outcomes of the answers it conditioned", uses.length ? outcomes(uses)
      : h("p", {class: "muted"}, "No judged answer had it in its prompt yet."), usesTable(uses)));
}

function usesTable(uses) {
  if (!uses.length) return null;
  return h("table", {class: "data"}, h("thead", {}, h("tr", {}, ["when", "user", "request", "answer", "feedback",
    "outcome", "score parts"].map((c) => h("th", {scope: "col"}, c)))),
  h("tbody", {}, uses.map((u) => h("tr", {},
    h("td", {class: "nowrap", title: when(u.judged_at || u.at)}, short(u.judged_at || u.at)), h("td", {}, u.user || "–"),
    h("td", {}, clip(u.request)), h("td", {}, clip(u.answer)),
    h("td", {}, u.feedback.map((f) => h("span", {class: `badge k-${f.kind}`}, f.value ? `${f.kind} ${f.value}` : f.kind))
      .concat(u.explicit ? [] : [h("span", {class: "muted"}, "next turn")])),
    h("td", {class: "num"}, u.success === null ? "–" : u.success.toFixed(2)),
    h("td", {class: "nowrap"}, u.parts ? parts(u.parts) : "–")))));
}
