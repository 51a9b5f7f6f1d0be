// Small SVG plots drawn here (no library): stacked bars over days, a histogram, outcomes over time, score parts, a
// canary's arms' good-outcome rates over time.
import {day, h, s, when} from "./dom.js";

export const KINDS = ["like", "copy", "rating", "dislike", "regenerate", "correction"];

function frame(width, height, label) {
  return s("svg", {viewBox: `0 0 ${width} ${height}`, class: "plot", role: "img", "aria-label": label});
}

function legend(items) {
  return h("ul", {class: "legend"}, items.map(([cls, text]) => h("li", {}, h("span", {class: `swatch ${cls}`}), text)));
}

/** Feedback events per day, stacked by kind, with the answers served per day as a line. */
export function activityChart(activity) {
  const W = 640, H = 200, L = 34, B = 22, T = 8;
  const n = activity.days.length;
  const kinds = KINDS.filter((k) => activity.feedback[k]).concat(
    Object.keys(activity.feedback).filter((k) => !KINDS.includes(k)));
  const totals = activity.days.map((_, i) => kinds.reduce((a, k) => a + activity.feedback[k][i], 0));
  const top = Math.max(1, ...totals, ...activity.answers);
  const x = (i) => L + (i * (W - L - 4)) / n, bw = Math.max(1, (W - L - 4) / n - 2);
  const y = (v) => H - B - (v * (H - B - T)) / top;
  const svg = frame(W, H, `feedback per day by kind over the last ${n} days, and answers served`);
  for (const v of [0, top]) {
    svg.append(s("line", {x1: L, x2: W - 4, y1: y(v), y2: y(v), class: "grid"}),
      s("text", {x: L - 4, y: y(v) + 4, class: "tick end"}, String(v)));
  }
  activity.days.forEach((t, i) => {
    let base = 0;
    for (const k of kinds) {
      const v = activity.feedback[k][i];
      if (!v) continue;
      svg.append(s("rect", {x: x(i) + 1, width: bw, y: y(base + v), height: y(base) - y(base + v), class: `k-${k}`},
        s("title", {}, `${day(t)}: ${v} ${k}`)));
      base += v;
    }
  });
  const points = activity.answers.map((v, i) => `${x(i) + 1 + bw / 2},${y(v)}`).join(" ");
  svg.append(s("polyline", {points, class: "answers"}));
  for (const i of [0, Math.floor(n / 2), n - 1]) {
    svg.append(s("text", {x: x(i) + bw / 2, y: H - 6, class: "tick mid"}, day(activity.days[i])));
  }
  return h("figure", {}, svg, legend([...kinds.map((k) => [`k-${k}`, k]), ["line-answers", "answers served"]]));
}

/** A histogram of utility over [0, 1]. */
export function histogram(hist, label) {
  const W = 320, H = 200, L = 30, B = 22, T = 8;
  const n = hist.counts.length, top = Math.max(1, ...hist.counts);
  const bw = (W - L - 4) / n;
  const y = (v) => H - B - (v * (H - B - T)) / top;
  const svg = frame(W, H, label);
  svg.append(s("line", {x1: L, x2: W - 4, y1: y(0), y2: y(0), class: "grid"}),
    s("text", {x: L - 4, y: y(top) + 4, class: "tick end"}, String(top)),
    s("text", {x: L - 4, y: y(0) + 4, class: "tick end"}, "0"));
  hist.counts.forEach((v, i) => {
    const lo = hist.edges[i].toFixed(1), hi = hist.edges[i + 1].toFixed(1);
    svg.append(s("rect", {x: L + i * bw + 1, width: bw - 2, y: y(v), height: y(0) - y(v), class: "bar"},
      s("title", {}, `utility ${lo}–${hi}: ${v}`)));
  });
  for (const [i, text] of [[0, "0"], [n / 2, "0.5"], [n, "1"]]) {
    svg.append(s("text", {x: L + i * bw, y: H - 6, class: "tick mid"}, text));
  }
  return h("figure", {}, svg);
}

/** Each judged use of an experience: its outcome (0 failed … 1 served) over time; filled when explicit. */
export function outcomes(uses) {
  const W = 960, H = 200, L = 34, B = 22, T = 10;
  const svg = frame(W, H, "outcomes of the answers this experience conditioned, over time");
  const points = uses.filter((u) => u.success !== null).map((u) => ({t: u.judged_at || u.at, ...u}));
  const t0 = Math.min(...points.map((p) => p.t)), t1 = Math.max(...points.map((p) => p.t));
  const x = (t) => (t1 > t0 ? L + ((t - t0) * (W - L - 12)) / (t1 - t0) : (L + W) / 2);
  const y = (v) => H - B - v * (H - B - T);
  for (const v of [0, 0.5, 1]) {
    svg.append(s("line", {x1: L, x2: W - 4, y1: y(v), y2: y(v), class: "grid"}),
      s("text", {x: L - 4, y: y(v) + 4, class: "tick end"}, String(v)));
  }
  for (const p of points) {
    svg.append(s("circle", {cx: x(p.t), cy: y(p.success), r: 5, class: p.explicit ? "dot" : "dot implicit"},
      s("title", {}, `${when(p.t)}: ${p.success.toFixed(2)} (${p.explicit ? "explicit" : "implicit"})`)));
  }
  if (points.length) {
    svg.append(s("text", {x: L, y: H - 6, class: "tick"}, when(t0)),
      s("text", {x: W - 4, y: H - 6, class: "tick end"}, when(t1)));
  }
  return h("figure", {}, svg, legend([["dot-explicit", "explicit feedback"], ["dot-implicit", "next turn (implicit)"]]));
}

/** A canary's two arms: each arm's good-outcome rate so far after each of its rated conversations, over time. */
export function armRates(timeline) {
  const W = 960, H = 200, L = 34, B = 22, T = 10;
  const svg = frame(W, H, "each arm's good-outcome rate so far, after each rated conversation, over time");
  const arms = ["canary", "current"].filter((arm) => timeline[arm].at.length);
  const times = arms.flatMap((arm) => timeline[arm].at);
  const t0 = Math.min(...times), t1 = Math.max(...times);
  const x = (t) => (t1 > t0 ? L + ((t - t0) * (W - L - 12)) / (t1 - t0) : (L + W) / 2);
  const y = (v) => H - B - v * (H - B - T);
  for (const v of [0, 0.5, 1]) {
    svg.append(s("line", {x1: L, x2: W - 4, y1: y(v), y2: y(v), class: "grid"}),
      s("text", {x: L - 4, y: y(v) + 4, class: "tick end"}, String(v)));
  }
  for (const arm of arms) {
    const {at, n, rate} = timeline[arm], last = at.length - 1;
    const points = at.map((t, i) => `${x(t)},${y(rate[i])}`).join(" ");
    svg.append(s("polyline", {points, class: `rate arm-${arm}`, "data-arm": arm}),
      s("circle", {cx: x(at[last]), cy: y(rate[last]), r: 4, class: `end arm-${arm}`},
        s("title", {}, `${arm}: ${rate[last].toFixed(3)} after ${n[last]} rated conversations`)));
  }
  if (times.length) {
    svg.append(s("text", {x: L, y: H - 6, class: "tick"}, when(t0)),
      s("text", {x: W - 4, y: H - 6, class: "tick end"}, when(t1)));
  }
  return h("figure", {id: "canary-rates"}, svg, legend([["arm-canary", "canary arm"], ["arm-current", "current arm"]]));
}

/** The parts of a hit's score as one bar: sim, util and rec from zero (a negative util goes left). */
export function parts(hit, scale = 1.6) {
  const W = 160, H = 14, zero = 40, unit = (W - zero - 2) / scale;
  const svg = s("svg", {viewBox: `0 0 ${W} ${H}`, class: "parts", role: "img",
    "aria-label": `sim ${hit.sim.toFixed(3)}, util ${hit.util.toFixed(3)}, rec ${hit.rec.toFixed(3)}`});
  let right = zero, left = zero;
  for (const [name, v] of [["sim", hit.sim], ["util", hit.util], ["rec", hit.rec]]) {
    const w = Math.abs(v) * unit;
    if (v >= 0) { svg.append(s("rect", {x: right, y: 1, width: w, height: H - 2, class: `p-${name}`})); right += w; }
    else { left -= w; svg.append(s("rect", {x: left, y: 1, width: w, height: H - 2, class: `p-${name} neg`})); }
  }
  svg.append(s("line", {x1: zero, x2: zero, y1: 0, y2: H, class: "zero"}));
  return svg;
}

export function partsLegend() {
  return legend([["p-sim", "similarity"], ["p-util", "utility"], ["p-rec", "recency"]]);
}

/** A 0..1 share as a bar with its percentage. */
export function meter(value, label) {
  return h("span", {class: "meter"}, h("meter", {min: 0, max: 1, value, "aria-label": label}),
    ` ${(100 * value).toFixed(1)} %`);
}
