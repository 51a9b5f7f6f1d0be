// The inspector: sign in with a key, then one view at a time, chosen by the URL's hash (#/memories/12).
import {ApiError, get, session, signIn, signOut} from "./api.js";
import {clear, h} from "./dom.js";
import * as ask from "./ask.js";
import * as consolidation from "./consolidation.js";
import * as erasure from "./erasure.js";
import * as interactions from "./interactions.js";
import * as memories from "./memories.js";
import * as overview from "./overview.js";

const VIEWS = {overview, memories, ask, interactions, consolidation, erasure};
const ORDER = Object.keys(VIEWS);
const main = document.getElementById("main");
let timers = [];
let statusTimer = null;

const ctx = {
  say(message, kind = "ok") {
    const box = document.getElementById("status");
    box.className = `status ${kind}`;
    box.textContent = message;
    clearTimeout(statusTimer);
    statusTimer = setTimeout(() => { box.textContent = ""; box.className = "status"; }, 6000);
  },
  go(hash) {
    if (location.hash === hash) route(); else location.hash = hash;
  },
  every(ms, fn) {
    timers.push(setInterval(() => fn().catch?.((e) => ctx.say(e.message, "error")), ms));
  },
};

function nav(current) {
  const links = ORDER.map((name, i) => h("a", {href: `#/${name}`, "aria-current": name === current ? "page" : null,
    title: `${VIEWS[name].title} (key ${i + 1})`}, VIEWS[name].title));
  clear(document.getElementById("nav")).append(...links);
}

function who(tenant) {
  const box = clear(document.getElementById("who"));
  if (!tenant) return;
  box.append("tenant ", h("strong", {id: "tenant"}, tenant), " ",
    h("button", {type: "button", class: "link", onclick: () => { signOut(); route(); }}, "Sign out"));
}

function login(message) {
  nav(null);
  who(null);
  const key = h("input", {type: "password", id: "key", autocomplete: "off", required: true, "aria-label": "API key"});
  const tenant = h("input", {type: "text", id: "tenant-name", autocomplete: "off", "aria-label": "tenant"});
  const error = h("p", {class: "error-text", role: "alert"}, message || "");
  const form = h("form", {class: "login card", onsubmit: async (e) => {
    e.preventDefault();
    signIn(key.value.trim(), tenant.value.trim());
    try {
      await get("/v1/memory/stats");
      route();
    } catch (err) {
      signOut();
      error.textContent = err.status === 401 ? "That key is not valid (or, for an admin key, name a tenant)."
        : err.message;
    }
  }}, h("h1", {}, "Sign in"), h("p", {}, "The inspector shows one tenant's memory. Its key is kept for this " +
    "browser tab only and sent with each request."),
  h("label", {for: "key"}, "API key"), key,
  h("label", {for: "tenant-name"}, "Tenant (admin keys only)"), tenant, error, h("button", {type: "submit"}, "Open"));
  clear(main).append(form);
  key.focus();
}

async function route() {
  timers.forEach(clearInterval);
  timers = [];
  if (!session()) return login();
  const [name, ...params] = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const view = VIEWS[name] ? name : "overview";
  nav(view);
  document.title = `${VIEWS[view].title} · logmem inspector`;
  const root = h("div", {class: "view", id: `view-${view}`});
  clear(main).append(root);
  try {
    if (!document.getElementById("tenant")) {
      const stats = await get("/v1/memory/stats");
      who(Object.keys(stats.index)[0] || session().tenant || "");
    }
    await VIEWS[view].render(root, params.filter(Boolean), ctx);
    root.setAttribute("data-ready", "");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return login("The key was refused; sign in again.");
    root.append(h("p", {class: "error-text", role: "alert"}, `Could not load: ${err.message}`));
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("logmem:signed-out", () => {  // the sign-in form reports its own refusals
  if (!document.querySelector("form.login")) login("The key was refused; sign in again.");
});
window.addEventListener("unhandledrejection", (e) => ctx.say(e.reason?.message || String(e.reason), "error"));
document.addEventListener("keydown", (e) => {
  const typing = e.target.closest("input, textarea, select");
  if (e.key === "Escape" && typing) return e.target.blur();
  if (typing || e.ctrlKey || e.metaKey || e.altKey || !session()) return;
  const i = Number(e.key);
  if (i >= 1 && i <= ORDER.length) { location.hash = `#/${ORDER[i - 1]}`; e.preventDefault(); }
  else if (e.key === "/") {
    e.preventDefault();
    if (!location.hash.startsWith("#/memories")) location.hash = "#/memories";
    setTimeout(() => document.querySelector("[data-search]")?.focus(), 50);
  }
});
route();
