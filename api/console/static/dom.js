// DOM building without innerHTML: every value from the API becomes a text node, never markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const badge = (value) => h("span", { class: `badge ${value || ""}` }, value || "–");

export function fmt(v, digits = 3) {
  return typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "–";
}

export const when = (iso) => (iso ? iso.replace("T", " ").slice(0, 19) : "–");

export function errorBox(e) {
  const hint = e.code === "insufficient_scope" ? " Ask for a key with this scope." :
               e.code === "unauthorized" ? " Sign in again with a valid key." : "";
  return h("div", { class: "error", role: "alert" }, `${e.code || "error"}: ${e.text || e.message}.${hint}`);
}

export function table(columns, rows, { id, empty = "Nothing yet." } = {}) {
  return h("table", { id },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c.title)))),
    h("tbody", {}, rows.length ? rows.map((r) => h("tr", { "data-id": r.id }, columns.map((c) => h("td", { class: c.num ? "num" : "" }, c.cell(r)))))
                               : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, empty))));
}

export function progressBar(p) {
  const pct = p && p.total ? Math.min(100, Math.round((100 * p.step) / p.total)) : 0;
  return h("span", { class: "bar", title: `${pct} %` }, h("span", { style: `width:${pct}%` }));
}

export function download(name, text, type = "application/json") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
