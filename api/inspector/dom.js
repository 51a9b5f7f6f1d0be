// Building the page without ever parsing data as HTML: every string becomes a text node.
const SVG = "http://www.w3.org/2000/svg";

function build(el, props, children) {
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.setAttribute("class", value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "value" || name === "checked" || name === "disabled") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h("td", {class: "num"}, text, ...). Strings are appended as text, never as markup. */
export function h(tag, props = {}, ...children) {
  return build(document.createElement(tag), props, children);
}

/** An SVG element, built the same way. */
export function s(tag, props = {}, ...children) {
  return build(document.createElementNS(SVG, tag), props, children);
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function num(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  if (Number.isInteger(x)) return x.toLocaleString("en-US");
  return Number(x).toFixed(digits);
}

export function pct(x) {
  return `${(100 * x).toFixed(1)} %`;
}

/** A time as "YYYY-MM-DD HH:MM" (UTC). */
export function when(seconds) {
  if (!seconds) return "–";
  return new Date(seconds * 1000).toISOString().slice(0, 16).replace("T", " ");
}

/** A time as "MM-DD HH:MM" (UTC), for table cells. */
export function short(seconds) {
  return seconds ? when(seconds).slice(5) : "–";
}

export function day(seconds) {
  return new Date(seconds * 1000).toISOString().slice(5, 10);
}

export function ageDays(seconds) {
  const days = (Date.now() / 1000 - seconds) / 86400;
  return days < 1 ? `${Math.max(0, Math.round(days * 24))} h` : `${days.toFixed(1)} d`;
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** A button that asks once more, in place, before it acts (no browser dialog). */
export function confirmButton(label, question, action, cls = "danger") {
  const box = h("span", {class: "confirm"});
  const ask = h("button", {type: "button", class: cls, onclick: () => {
    clear(box).append(h("span", {class: "question"}, question), " ",
      h("button", {type: "button", class: cls, onclick: async (e) => {
        e.target.disabled = true;
        try { await action(); } finally { e.target.disabled = false; }
      }}, `Yes, ${label.toLowerCase()}`), " ",
      h("button", {type: "button", onclick: () => { clear(box).append(ask); ask.focus(); }}, "Cancel"));
    box.querySelector("button").focus();
  }}, label);
  box.append(ask);
  return box;
}

/** A definition list from [label, value] pairs. */
export function facts(pairs) {
  return h("dl", {class: "facts"}, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

export function section(title, ...children) {
  return h("section", {class: "card"}, h("h2", {}, title), ...children);
}

/** A short text that shows in full on hover and focus. */
export function clip(text, cls = "clip") {
  return h("span", {class: cls, title: text}, text);
}
