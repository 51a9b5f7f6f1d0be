// Overview: what the tenant's memory holds and how its users judged it lately.
import {get} from "./api.js";
import {bytes, facts, h, num, section} from "./dom.js";
import {activityChart, histogram, meter} from "./plots.js";

export const title = "Overview";

export async function render(root) {
  const [stats, activity, adapters] = await Promise.all([
    get("/v1/memory/stats"), get("/v1/memory/activity", {days: 30}), get("/v1/adapters")]);
  const index = Object.values(stats.index)[0] || {kind: "none", size: 0, bytes: 0};
  const active = adapters.find((a) => a.active);
  const feedback = Object.entries(stats.feedback).sort((a, b) => b[1] - a[1]);
  root.append(
    h("div", {class: "tiles"},
      tile("Interactions", num(stats.interactions), `${num(stats.awaiting)} awaiting feedback`),
      tile("Experiences", num(stats.experiences), `${num(stats.merged)} merged, ${num(stats.conflicts)} conflicts`),
      tile("Index", num(index.size), `${index.kind}, ${bytes(index.bytes)}`),
      tile("Consolidated", meter(stats.consolidated_share, "consolidated share"), `${num(stats.lessons)} with a lesson`),
      tile("Active adapter", active ? active.version : "base model",
        active ? `${active.method}, ${active.status}` : `${adapters.length} adapter(s) trained`),
      tile("Serving mode", stats.serving_mode.mode, stats.serving_mode.source)),
    servingSection(stats.serving_mode),
    h("div", {class: "two"},
      section("Feedback and answers, last 30 days", activityChart(activity)),
      section("Utility of the experiences", histogram(activity.utility, "utility distribution"),
        facts([["mean", num(stats.utility.mean)], ["median", num(stats.utility.p50)],
          ["quartiles", `${num(stats.utility.p25)} – ${num(stats.utility.p75)}`]]))),
    h("div", {class: "two"},
      section("Feedback by kind (all time)", feedback.length
        ? h("table", {class: "compact"}, h("tbody", {}, feedback.map(([k, n]) =>
          h("tr", {}, h("th", {scope: "row"}, h("span", {class: `swatch k-${k}`}), k), h("td", {class: "num"}, num(n))))))
        : h("p", {class: "muted"}, "No feedback yet.")),
      section("Age of the experiences", facts([["median", `${num(stats.age_days.p50, 1)} days`],
        ["oldest", `${num(stats.age_days.max, 1)} days`], ["filtered as noise", num(stats.filtered)]]))));
}

// How the tenant is answered when a request names no mode, why, and each held-out slice the choice was made over:
// its figure per mode (the served mode's in bold) and its share of the tenant's recent traffic.
function servingSection(mode) {
  const why = h("p", {id: "serving-reason"}, mode.reason);
  if (!mode.slices.length) return section("Serving mode", why);
  const modes = Object.keys(mode.slices[0].figures);
  const head = h("tr", {}, ["slice", "measured", "weight", ...modes].map((c) => h("th", {scope: "col"}, c)));
  const body = mode.slices.map((sl) => h("tr", {"data-slice": sl.name},
    h("td", {}, sl.name), h("td", {class: "num"}, `${num(sl.measured)} of ${num(sl.size)}`),
    h("td", {class: "num"}, num(sl.weight, 2)),
    ...modes.map((m) => h("td", {class: "num"}, m === mode.mode ? h("strong", {}, num(sl.figures[m]))
      : num(sl.figures[m])))));
  return section(`Serving mode: held-out ${mode.metric} per slice`, why,
    h("table", {class: "data", id: "serving-slices"}, h("thead", {}, head), h("tbody", {}, body)));
}

function tile(label, value, note) {
  return h("div", {class: "tile"}, h("div", {class: "label"}, label), h("div", {class: "value"}, value),
    h("div", {class: "note"}, note));
}
