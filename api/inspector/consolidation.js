// Consolidation: jobs with live progress, their gate's figures and how their training stopped (steps run of those
// planned; converged, patience, wall_time or max_steps; the step whose weights were kept); adapters to activate or
// roll back; the canary (canary.js: a promoted adapter on a share of the conversations, judged by its users' outcomes);
// stale adapters (trained on data since erased) and the rebuild that replaces them.
import {get, post} from "./api.js";
import {canaryViews} from "./canary.js";
import {confirmButton, h, num, section, short} from "./dom.js";

export const title = "Consolidation";
const GATE = [["gate", "gate"], ["base_nll", "held-out NLL, base"], ["student_nll", "held-out NLL, adapter"],
  ["base_probe_ppl", "probe perplexity, base"], ["student_probe_ppl", "probe perplexity, adapter"],
  ["train", "trained on"], ["holdout", "held out"], ["steps", "steps run"], ["steps_planned", "steps planned"],
  ["stop", "stopped by"], ["best_step", "weights of step"], ["seconds", "seconds"]];

export async function render(root, params, ctx) {
  const jobs = h("div", {id: "jobs"}), adapters = h("div", {id: "adapters"}), canaries = h("div", {id: "canaries"});
  root.append(section("Jobs", startForm(ctx, () => refresh()), jobs), section("Adapters", adapters),
    section("Canary", canaries));
  let busy = false;
  const refresh = async () => {
    const [jobList, adapterList, canaryList] = await Promise.all([get("/v1/consolidations"), get("/v1/adapters"),
      get("/v1/canaries")]);
    jobs.replaceChildren(jobsTable(jobList));
    adapters.replaceChildren(...adapterViews(adapterList, ctx, refresh));
    canaries.replaceChildren(...await canaryViews(canaryList, ctx, refresh));
    busy = jobList.some((j) => j.status === "queued" || j.status === "running");
  };
  await refresh();
  ctx.every(2000, () => busy && refresh());  // live progress while a job is queued or running
}

function startForm(ctx, done) {
  const method = h("select", {"aria-label": "method"}, ["sft", "kd", "sft+kd"].map((m) => h("option", {value: m}, m)));
  const steps = h("input", {type: "number", min: 0, value: 0, "aria-label": "max steps (0: all)", class: "short"});
  return h("form", {class: "toolbar", onsubmit: async (e) => {
    e.preventDefault();
    const job = await post("/v1/consolidations", {method: method.value, max_steps: Number(steps.value) || 0});
    ctx.say(`Queued consolidation job ${job.id}.`);
    await done();
  }}, h("label", {}, "method ", method), h("label", {}, "max steps ", steps),
  h("button", {type: "submit"}, "Consolidate now"));
}

function figures(metrics) {
  if (!metrics) return null;
  const shown = GATE.filter(([k]) => k in metrics);
  return h("dl", {class: "figures"}, shown.map(([k, label]) => [h("dt", {}, label),
    h("dd", {}, typeof metrics[k] === "number" ? num(metrics[k]) : String(metrics[k]))]));
}

function jobsTable(jobs) {
  if (!jobs.length) return h("p", {class: "muted"}, "No consolidation has run yet.");
  return h("table", {class: "data", id: "job-table"}, h("thead", {}, h("tr", {},
    ["job", "status", "progress", "queued", "finished", "gate figures"].map((c) => h("th", {scope: "col"}, c)))),
  h("tbody", {}, [...jobs].reverse().map((j) => h("tr", {},
    h("td", {class: "num"}, String(j.id)), h("td", {}, h("span", {class: `badge j-${j.status}`}, j.status)),
    h("td", {}, h("span", {class: "progress"}, h("progress", {max: 1, value: j.progress,
      "aria-label": `job ${j.id} progress`}), ` ${Math.round(100 * j.progress)} %`),
    j.message ? h("div", {class: "muted small"}, j.message) : null),
    h("td", {class: "nowrap"}, short(j.created_at)), h("td", {class: "nowrap"}, short(j.finished_at)),
    h("td", {}, j.error ? h("span", {class: "error-text"}, j.error) : figures(j.metrics))))));
}

function adapterViews(adapters, ctx, refresh) {
  const active = adapters.find((a) => a.active);
  const stale = adapters.filter((a) => a.status === "stale" || a.stale_at);
  const rollback = h("button", {type: "button", id: "rollback", disabled: !active, onclick: async () => {
    const {active: now} = await post("/v1/adapters/rollback");
    ctx.say(`Rolled back: ${now ? `adapter ${now}` : "the base model"} answers now.`);
    await refresh();
  }}, "Roll back");
  const activate = (a, force) => async () => {
    await post(`/v1/adapters/${encodeURIComponent(a.version)}/activate`, undefined, force ? {force: true} : undefined);
    ctx.say(`Adapter ${a.version} is active.`);
    await refresh();
  };
  const rows = [...adapters].reverse().map((a) => h("tr", {"data-version": a.version, class: a.active ? "active" : ""},
    h("td", {}, h("strong", {}, a.version), a.active ? h("span", {class: "badge active"}, "active") : null),
    h("td", {}, h("span", {class: `badge a-${a.status}`}, a.status)), h("td", {}, a.method),
    h("td", {class: "num"}, num(a.covered)), h("td", {}, a.previous || "–"), h("td", {class: "nowrap"}, short(a.created_at)),
    h("td", {}, figures(a.metrics)),
    h("td", {}, a.active ? null : a.status === "promoted"
      ? h("button", {type: "button", class: "activate", onclick: activate(a, false)}, "Activate")
      : a.status === "stale" ? confirmButton("Activate", "It holds erased data.", activate(a, true)) : null)));
  const views = [h("div", {class: "toolbar"}, h("span", {}, "Serving: ", h("strong", {id: "serving"},
    active ? `adapter ${active.version}` : "the base model")), rollback),
  adapters.length ? h("table", {class: "data", id: "adapter-table"}, h("thead", {}, h("tr", {},
    ["version", "status", "method", "experiences", "previous", "trained", "gate figures", ""]
      .map((c) => h("th", {scope: "col"}, c)))), h("tbody", {}, rows))
    : h("p", {class: "muted"}, "No adapter trained yet.")];
  if (stale.length) {
    views.push(h("div", {class: "stale", id: "stale"}, h("h3", {}, "Stale adapters"),
      h("p", {}, `Trained on data since erased: ${stale.map((a) => a.version).join(", ")}. A rebuild trains a ` +
        "replacement without that data and, once the replacement is promoted, deletes the stale weights."),
      h("button", {type: "button", id: "rebuild", onclick: async () => {
        const job = await post("/v1/consolidations", {rebuild: true});
        ctx.say(`Queued rebuild job ${job.id}.`);
        await refresh();
      }}, "Rebuild without the erased data")));
  }
  return views;
}
