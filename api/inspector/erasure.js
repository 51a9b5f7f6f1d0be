// Erasure: forget a user of the tenant, and see what went (rows, vectors, adapters marked stale).
import {del, get} from "./api.js";
import {confirmButton, h, num, section, short} from "./dom.js";

export const title = "Erasure";
let lastResult = null;

export async function render(root, params, ctx) {
  const list = h("div", {id: "users"}), result = h("div", {id: "erasure-result", "aria-live": "polite"});
  const refresh = async () => list.replaceChildren(usersTable(await get("/v1/memory/users"), forget));
  const forget = async (user) => {
    const before = new Set((await get("/v1/adapters")).filter((a) => a.stale_at).map((a) => a.version));
    const {removed} = await del(`/v1/memory/users/${encodeURIComponent(user)}`);
    const stale = (await get("/v1/adapters")).filter((a) => a.stale_at && !before.has(a.version)).map((a) => a.version);
    lastResult = {user, removed, stale};
    result.replaceChildren(report(lastResult));
    ctx.say(`Forgot user ${user}.`);
    await refresh();
  };
  const name = h("input", {type: "text", id: "forget-user", "aria-label": "user id", placeholder: "user id"});
  const form = h("form", {class: "toolbar", onsubmit: (e) => {
    e.preventDefault();
    if (name.value.trim()) forget(name.value.trim());
  }}, name, h("button", {type: "submit", class: "danger"}, "Forget this user"));
  root.append(section("Forget a user", h("p", {}, "Deletes the user's interactions and feedback, the experiences " +
    "made from their words (rows, vectors and text) and their support of others; adapters trained on what was " +
    "deleted are marked stale."), form, result), section("Users", list));
  if (lastResult) result.replaceChildren(report(lastResult));
  await refresh();
}

function usersTable(users, forget) {
  if (!users.length) return h("p", {class: "muted"}, "No named users in this tenant.");
  return h("table", {class: "data", id: "user-table"}, h("thead", {}, h("tr", {},
    ["user", "interactions", "experiences", "last seen", ""].map((c) => h("th", {scope: "col"}, c)))),
  h("tbody", {}, users.map((u) => h("tr", {"data-user": u.user},
    h("td", {}, u.user), h("td", {class: "num"}, num(u.interactions)), h("td", {class: "num"}, num(u.experiences)),
    h("td", {class: "nowrap"}, short(u.last_seen_at)),
    h("td", {}, confirmButton("Forget", `Forget ${u.user}?`, () => forget(u.user)))))));
}

function report({user, removed, stale}) {
  return h("div", {class: "done"}, h("h3", {}, `Forgot ${user}`), h("ul", {},
    h("li", {}, `${num(removed.interactions || 0)} interaction(s) and their feedback`),
    h("li", {}, `${num(removed.experiences || 0)} experience(s): rows, vectors and text`),
    h("li", {}, stale.length ? `adapters marked stale: ${stale.join(", ")} (rebuild them under Consolidation)`
      : "no adapter was trained on what was removed")));
}
