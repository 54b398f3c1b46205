// Tiny DOM helpers. Data from the API only ever goes in as text (textContent), never as HTML.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (v === true) el.setAttribute(k, "");
      else el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Set text only when it changed: a DOM write costs more than the comparison. */
export function setText(el, text) {
  const s = String(text);
  if (el.textContent !== s) el.textContent = s;
}

export function setClass(el, cls) {
  if (el.className !== cls) el.className = cls;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
}

/** A horizontal bar: returns [bar element, set(fraction, level)]. */
export function bar(extra = "") {
  const fill = h("i");
  const el = h("div", { class: `bar ${extra}`.trim() }, fill);
  let last = -1;
  let lastCls = "";
  return [el, (frac, level = "") => {
    const pct = Number.isFinite(frac) ? Math.max(0, Math.min(1, frac)) * 100 : 0;
    const rounded = Math.round(pct * 10) / 10;
    if (rounded !== last) { fill.style.width = `${rounded}%`; last = rounded; }
    const cls = `bar ${extra} ${level}`.trim();
    if (cls !== lastCls) { el.className = cls; lastCls = cls; }
  }];
}
