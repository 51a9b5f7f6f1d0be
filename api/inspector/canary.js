// The canary panel of the Consolidation view: a promoted adapter answering a share of the tenant's conversations
// before it answers all of them. Both arms' rated conversations and good-outcome rates, the e-values against the
// thresholds that promote or roll it back, the verdict and why; Promote, Stop and Pin; both arms' rates over time;
// the canaries that ended, with their status and reason.
import {get, post} from "./api.js";
import {confirmButton, facts, h, num, pct, short} from "./dom.js";
import {armRates} from "./plots.js";

/** The panel's contents for the tenant's canaries (newest first, as GET /v1/canaries lists them). */
export async function canaryViews(canaries, ctx, refresh) {
  const live = canaries.find((c) => c.status === "live");
  const ended = canaries.filter((c) => c.status !== "live");
  const views = [live ? await liveView(live, ctx, refresh) : h("p", {class: "muted", id: "no-canary"},
    "No live canary. A consolidation job with a canary share (canary_share) starts its promoted adapter as one.")];
  if (ended.length) views.push(h("h3", {}, "Ended"), endedTable(ended));
  return views;
}

async function liveView(c, ctx, refresh) {
  const timeline = await get(`/v1/canaries/${c.id}/timeline`);
  const act = (path, body, said) => async () => {
    const done = await post(`/v1/canaries/${path}`, body);
    ctx.say(said(done));
    await refresh();
  };
  const buttons = h("div", {class: "toolbar"},
    h("button", {type: "button", id: "canary-promote", class: "activate", onclick: act("promote", undefined,
      (done) => `Canary ${done.version} promoted: it answers every conversation now.`)}, "Promote"),
    h("span", {id: "canary-stop"}, confirmButton("Stop", "Stop it? The current adapter answers everyone again.",
      act("stop", undefined, (done) => `Canary ${done.version} stopped.`))),
    h("button", {type: "button", id: "canary-pin", onclick: act("pin", {pinned: !c.pinned},
      (done) => done.pinned ? `Canary ${done.version} pinned: no automatic decision.`
        : `Canary ${done.version} unpinned: its outcomes decide again.`)}, c.pinned ? "Unpin" : "Pin"));
  return h("div", {id: "canary", "data-version": c.version},
    facts([["adapter", h("strong", {}, c.version)], ["against", c.current ? `adapter ${c.current}` : "the base model"],
      ["mode", c.mode], ["share", pct(c.share)], ["started", short(c.started_at)],
      ["pinned", c.pinned ? "yes: no automatic decision" : "no"]]),
    armsTable(c), evidence(c.decision), buttons, armRates(timeline));
}

function armsTable(c) {
  const row = (arm, adapter) => {
    const counts = c.arms[arm];
    return h("tr", {"data-arm": arm}, h("th", {scope: "row"}, h("span", {class: `swatch arm-${arm}`}), arm),
      h("td", {}, adapter), h("td", {class: "num"}, num(counts.n)), h("td", {class: "num"}, num(counts.good, 1)),
      h("td", {class: "num"}, counts.rate === null ? "–" : pct(counts.rate)));
  };
  return h("table", {class: "data", id: "canary-arms"}, h("thead", {}, h("tr", {},
    ["arm", "adapter", "rated conversations", "good outcomes", "good-outcome rate"]
      .map((col) => h("th", {scope: "col"}, col)))),
  h("tbody", {}, row("canary", c.version), row("current", c.current || "base model")));
}

/** An e-value against the threshold that acts on it, as a bar on a log scale (1 is no evidence). */
function evalue(e, threshold, id) {
  const share = Math.min(1, Math.max(0, Math.log(e) / Math.log(threshold)));
  return h("span", {class: "meter", id}, h("meter", {min: 0, max: 1, value: share, "aria-label": id}),
    ` ${num(e, 2)} of ${num(threshold)}`);
}

function evidence(d) {
  if (!d) return null;
  return h("dl", {class: "facts", id: "canary-decision"},
    h("dt", {}, "better: e-value (promotes at the threshold)"), h("dd", {}, evalue(d.e_better, d.promote_threshold,
      "e-better")),
    h("dt", {}, "worse: e-value (rolls back at the threshold)"), h("dd", {}, evalue(d.e_worse, d.rollback_threshold,
      "e-worse")),
    h("dt", {}, "verdict"), h("dd", {}, h("span", {class: `badge v-${d.verdict}`, id: "canary-verdict"}, d.verdict),
      " ", h("span", {id: "canary-reason"}, d.reason)));
}

function endedTable(canaries) {
  const rate = (c, arm) => (c.arms[arm].rate === null ? "–" : `${pct(c.arms[arm].rate)} of ${num(c.arms[arm].n)}`);
  return h("table", {class: "data", id: "canary-history"}, h("thead", {}, h("tr", {},
    ["canary", "adapter", "status", "share", "canary arm", "current arm", "started", "ended", "reason"]
      .map((col) => h("th", {scope: "col"}, col)))),
  h("tbody", {}, canaries.map((c) => h("tr", {"data-canary": c.id},
    h("td", {class: "num"}, String(c.id)), h("td", {}, c.version),
    h("td", {}, h("span", {class: `badge c-${c.status}`}, c.status.replace("_", " "))),
    h("td", {class: "num"}, pct(c.share)), h("td", {class: "num"}, rate(c, "canary")),
    h("td", {class: "num"}, rate(c, "current")), h("td", {class: "nowrap"}, short(c.started_at)),
    h("td", {class: "nowrap"}, short(c.decided_at)), h("td", {}, c.reason)))));
}
