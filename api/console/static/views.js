// The console's pages. Each takes the <main> element (and an id), renders, and returns a cleanup function
// when it keeps refreshing (live progress). Data only ever enters the page as text (dom.js).
import { api } from "./api.js";
import { parse, verify as verifyCertificate } from "./cert.js";
import { badge, download, errorBox, fmt, h, progressBar, table, when } from "./dom.js";

const FINAL = ["succeeded", "failed", "cancelled"];
const VERDICTS = ["forgotten", "not_memorised", "not_reached", "model_damaged", "unverified", "failed", "cancelled"];

function poll(fn, ms) {
  let timer = null;
  let alive = true;
  const tick = async () => {
    if (!alive) return;
    const again = await fn().catch(() => true);
    if (alive && again) timer = setTimeout(tick, ms);
  };
  tick();
  return () => { alive = false; clearTimeout(timer); };
}

const phaseCell = (r) => r.status === "queued" ? h("span", { class: "muted" }, "waiting for a worker") :
  FINAL.includes(r.status) ? h("span", { class: "muted" }, "done") :
  h("span", { class: "row" }, r.progress.phase || r.status, progressBar(r.progress),
    r.progress.total ? `${r.progress.step}/${r.progress.total}` : "");

// --- requests -----------------------------------------------------------------------------------------

export async function requests(view) {
  const status = h("select", { id: "status-filter", onchange: () => refresh() },
    ["", "queued", "running", "cancelling", "succeeded", "failed", "cancelled"].map((s) => h("option", { value: s }, s || "any")));
  const body = h("div", { id: "requests-body" });
  view.replaceChildren(h("h1", {}, "Forget requests"),
    h("form", { class: "filters panel", onsubmit: (e) => e.preventDefault() }, h("label", {}, "status", status)), body);
  async function refresh() {
    try {
      const page = await api.json("/v1/forget-requests", { status: status.value, limit: 100 });
      body.replaceChildren(table([
        { title: "request", cell: (r) => h("a", { href: `#/requests/${r.id}`, class: "mono" }, r.id) },
        { title: "status", cell: (r) => badge(r.status) },
        { title: "progress", cell: phaseCell },
        { title: "verdict", cell: (r) => r.verdict ? badge(r.verdict) : "–" },
        { title: "records", num: true, cell: (r) => r.record_count },
        { title: "ticket", cell: (r) => r.ticket || "–" },
        { title: "submitted", cell: (r) => when(r.created_at) },
      ], page.data, { id: "requests-table", empty: "No forget requests yet." }),
      ...(page.has_more ? [h("p", { class: "muted" }, "Showing the newest 100.")] : []));
      return page.data.some((r) => !FINAL.includes(r.status));
    } catch (e) { body.replaceChildren(errorBox(e)); return false; }
  }
  return poll(refresh, 2000);
}

export async function request(view, id) {
  const facts = h("div", { class: "panel", id: "request-facts" });
  const chartBox = h("div", { class: "panel chart", id: "live-curve" });
  const events = h("div", { class: "panel events", id: "events" });
  const evidence = h("div", { id: "evidence" });
  view.replaceChildren(h("h1", {}, "Request ", h("span", { class: "mono" }, id)), facts,
    h("h2", {}, "Unlearning curve (live)"), chartBox, h("h2", {}, "Events"), events, evidence);
  const points = new Map(); // step -> a check's metrics: from progress polls, events, and finally the audit
  let cursor = null;
  let history = false;
  let chart = null;
  let shownAudit = null;
  async function refresh() {
    let r;
    try { r = await api.json(`/v1/forget-requests/${id}`); } catch (e) { facts.replaceChildren(errorBox(e)); return false; }
    facts.replaceChildren(h("dl", { class: "facts" },
      h("dt", {}, "status"), h("dd", { id: "request-status" }, badge(r.status)),
      h("dt", {}, "progress"), h("dd", {}, phaseCell(r)),
      h("dt", {}, "verdict"), h("dd", {}, r.verdict ? badge(r.verdict) : "–"),
      h("dt", {}, "legal basis"), h("dd", {}, r.legal_basis),
      h("dt", {}, "ticket"), h("dd", {}, r.ticket || "–"),
      h("dt", {}, "subject (hash)"), h("dd", { class: "mono" }, r.subject_hash),
      h("dt", {}, "records"), h("dd", {}, `${r.record_count} (hashes only; the text is deleted when the request ends)`),
      h("dt", {}, "model"), h("dd", { class: "mono" }, r.model_id),
      h("dt", {}, "job"), h("dd", { class: "mono" }, r.job_id),
      h("dt", {}, "adapter version"), h("dd", {}, r.adapter_version ? `v${r.adapter_version.version} (${r.adapter_version.id})` : "–"),
      h("dt", {}, "audit record"), h("dd", {}, r.audit_id ? h("a", { href: `#/audits/${r.audit_id}`, class: "mono" }, r.audit_id) : "–"),
      r.error ? [h("dt", {}, "error"), h("dd", {}, r.error)] : null));
    try {
      for (;;) {
        const page = await api.json(`/v1/jobs/${r.job_id}/events`, { cursor, limit: 200 });
        for (const e of page.data) {
          events.prepend(h("div", {}, h("span", { class: "muted" }, when(e.created_at)), " ", e.level === "error" ? badge("failed") : "", " ", e.message));
          const d = e.data || {};
          if (e.type === "metrics" && d.phase === "unlearning" && typeof d.forget_ma === "number") points.set(d.step, d);
        }
        if (page.next) cursor = page.next;
        if (!page.has_more) break;
      }
    } catch (e) { events.replaceChildren(errorBox(e)); }
    const m = r.progress.metrics || {};
    if (r.progress.phase === "unlearning" && typeof m.forget_ma === "number") points.set(m.step ?? r.progress.step, m);
    if (r.audit_id && !history) {
      history = true; // the audit keeps every check of the curve (audit:read)
      const a = await api.json(`/v1/audits/${r.audit_id}`).catch(() => null);
      for (const p of (a && a.metrics && a.metrics.history) || []) points.set(p.step, p);
    }
    chart = drawCurve(chartBox, [...points.entries()].sort((x, y) => x[0] - y[0]).map(([step, p]) => ({ ...p, step })), chart);
    if (r.audit_id && shownAudit !== r.audit_id) {
      shownAudit = r.audit_id;
      evidence.replaceChildren(...(await auditPanel(r.audit_id)));
    }
    return !FINAL.includes(r.status);
  }
  const cancel = poll(refresh, 1500);
  return () => { cancel(); if (chart) chart.destroy(); };
}

function drawCurve(box, points, chart) {
  if (!window.uPlot || points.length === 0) {
    if (!points.length) box.replaceChildren(h("p", { class: "muted" }, "No unlearning checks yet."));
    return chart;
  }
  const series = [points.map((p) => p.step), points.map((p) => p.forget_ma),
    points.map((p) => p.loss_auc ?? null), points.map((p) => p.zlib_auc ?? null), points.map((p) => p.min_k_auc ?? null)];
  if (chart) { chart.setData(series); return chart; }
  box.replaceChildren();
  return new window.uPlot({
    width: Math.min(1000, box.clientWidth - 30), height: 240,
    scales: { x: { time: false }, y: { range: [0, 1] } },
    axes: [{ label: "step" }, { label: "forget MA / membership AUC" }],
    series: [{ label: "step" },
      { label: "forget MA", stroke: "#c0392b", width: 2 },
      { label: "AUC loss", stroke: "#2c6fbb", width: 1.5 },
      { label: "AUC zlib", stroke: "#2c6fbb", dash: [6, 4] },
      { label: "AUC Min-k%", stroke: "#2c6fbb", dash: [2, 3] }],
  }, series, box);
}

// --- audits -------------------------------------------------------------------------------------------

async function auditPanel(auditId) {
  const result = h("div", { id: "certificate-check" });
  const frame = h("iframe", { class: "report", id: "report-frame", sandbox: "", title: "evidence report" });
  const parts = [h("h2", {}, "Evidence report"),
    h("div", { class: "row" },
      h("button", { type: "button", id: "download-certificate", onclick: async () => {
        try { download(`certificate-${auditId}.json`, await api.raw(`/v1/audits/${auditId}/certificate`)); }
        catch (e) { result.replaceChildren(errorBox(e)); }
      } }, "Download certificate"),
      h("button", { type: "button", class: "secondary", id: "check-certificate", onclick: async () => {
        try { await showCheck(result, await api.raw(`/v1/audits/${auditId}/certificate`)); }
        catch (e) { result.replaceChildren(errorBox(e)); }
      } }, "Check its signature here"),
      h("button", { type: "button", class: "secondary", onclick: async () => {
        try { download(`evidence-${auditId}.html`, await api.text(`/v1/audits/${auditId}/report`), "text/html"); }
        catch (e) { result.replaceChildren(errorBox(e)); }
      } }, "Download report")),
    result, frame];
  try { frame.srcdoc = await api.text(`/v1/audits/${auditId}/report`); }
  catch (e) { return [h("h2", {}, "Evidence report"), errorBox(e)]; }
  return parts;
}

export async function audit(view, id) {
  view.replaceChildren(h("h1", {}, "Audit record ", h("span", { class: "mono" }, id)), ...(await auditPanel(id)));
}

export async function audits(view) {
  const field = (name, attrs = {}) => h("input", { name, id: `filter-${name}`, ...attrs });
  const inputs = {
    subject: field("subject", { placeholder: "subject id as submitted" }),
    model_id: field("model_id", { placeholder: "mdl_…" }),
    verdict: h("select", { name: "verdict", id: "filter-verdict" }, h("option", { value: "" }, "any"), VERDICTS.map((v) => h("option", { value: v }, v))),
    since: field("since", { type: "datetime-local" }),
    until: field("until", { type: "datetime-local" }),
  };
  const body = h("div", { id: "audits-body" });
  const chain = h("div", { id: "chain-result" });
  let rows = [];
  let next = null;
  const query = () => {
    const q = {};
    for (const [k, el] of Object.entries(inputs)) {
      if (!el.value) continue;
      q[k] = el.type === "datetime-local" ? new Date(el.value).toISOString() : el.value;
    }
    return q;
  };
  async function load(more = false) {
    try {
      const page = await api.json("/v1/audits", { ...query(), limit: 50, cursor: more ? next : null });
      rows = more ? rows.concat(page.data) : page.data;
      next = page.has_more ? page.next : null;
      body.replaceChildren(table([
        { title: "seq", num: true, cell: (a) => a.seq },
        { title: "audit", cell: (a) => h("a", { href: `#/audits/${a.id}`, class: "mono" }, a.id) },
        { title: "request", cell: (a) => h("a", { href: `#/requests/${a.request_id}`, class: "mono" }, a.request_id) },
        { title: "verdict", cell: (a) => badge(a.verdict) },
        { title: "legal basis", cell: (a) => a.legal_basis },
        { title: "ticket", cell: (a) => a.ticket || "–" },
        { title: "completed", cell: (a) => when(a.completed_at) },
      ], rows, { id: "audits-table", empty: "No audit records match." }),
      ...(next ? [h("p", {}, h("button", { type: "button", class: "secondary", onclick: () => load(true) }, "Load more"))] : []));
    } catch (e) { body.replaceChildren(errorBox(e)); }
  }
  const verifyChain = async () => {
    try {
      const r = await api.json("/v1/audits/verify");
      chain.replaceChildren(h("div", { class: `result ${r.ok ? "valid" : "invalid"}` },
        r.ok ? `Audit chain intact: ${r.checked} records, ending at its signed head.`
             : `Audit chain BROKEN at record ${r.first_broken_seq ?? "?"}: ${r.reason}`));
    } catch (e) { chain.replaceChildren(errorBox(e)); }
  };
  view.replaceChildren(h("h1", {}, "Audit records"),
    h("form", { class: "filters panel", id: "audit-filters", onsubmit: (e) => { e.preventDefault(); load(); } },
      Object.entries(inputs).map(([k, el]) => h("label", {}, k.replace("_", " "), el)),
      h("button", { type: "submit" }, "Filter"),
      h("button", { type: "button", class: "secondary", id: "verify-chain", onclick: verifyChain }, "Verify the chain")),
    chain, body);
  await load();
}

// --- models -------------------------------------------------------------------------------------------

export async function models(view) {
  view.replaceChildren(h("h1", {}, "Models and adapter versions"));
  let page;
  try { page = await api.json("/v1/models", { limit: 200 }); } catch (e) { view.append(errorBox(e)); return; }
  if (!page.data.length) view.append(h("p", { class: "panel muted" }, "No models registered."));
  for (const m of page.data) {
    const adapters = h("div", {});
    view.append(h("div", { class: "panel", "data-model": m.id },
      h("h2", {}, m.name, " ", h("span", { class: "mono muted" }, m.id)),
      h("dl", { class: "facts" },
        h("dt", {}, "source"), h("dd", { class: "mono" }, m.source),
        h("dt", {}, "fingerprint"), h("dd", { class: "mono" }, m.fingerprint || "– (set by its first job)"),
        h("dt", {}, "reference sets"), h("dd", {}, `retain ${m.retain_count}, holdout ${m.holdout_count}`),
        h("dt", {}, "active version"), h("dd", {}, m.active_adapter ? `v${m.active_adapter.version}` : "none yet")),
      adapters));
    api.json(`/v1/models/${m.id}/adapters`, { limit: 200 }).then((a) => adapters.replaceChildren(table([
      { title: "version", num: true, cell: (x) => `v${x.version}` },
      { title: "status", cell: (x) => h("span", { class: `badge ${x.status === "active" ? "ok" : ""}` }, x.status) },
      { title: "adapter", cell: (x) => h("span", { class: "mono" }, x.id) },
      { title: "rank", num: true, cell: (x) => x.rank },
      { title: "sha256", cell: (x) => h("span", { class: "mono" }, x.sha256) },
      { title: "created", cell: (x) => when(x.created_at) },
    ], a.data, { empty: "No adapter versions yet." }))).catch((e) => adapters.replaceChildren(errorBox(e)));
  }
}

// --- certificate check --------------------------------------------------------------------------------

async function showCheck(box, text) {
  let doc;
  try { doc = parse(text); } catch (e) {
    box.replaceChildren(h("div", { class: "result invalid", id: "verify-result" }, `INVALID: ${e.message}`));
    return;
  }
  const publicKey = await api.json("/v1/keys/audit-public");
  let record = null;
  if (doc && typeof doc.audit_id === "string") {
    record = await api.json(`/v1/audits/${encodeURIComponent(doc.audit_id)}`).catch((e) => new Error(`${e.code}: ${e.text || e.message}`));
  }
  const out = await verifyCertificate(doc, publicKey, record);
  const failed = out.failedFields.length ? ` — changed: ${out.failedFields.join(", ")}` : "";
  box.replaceChildren(
    h("div", { class: `result ${out.valid ? "valid" : "invalid"}`, id: "verify-result" },
      out.valid ? `VALID: signed by the service's audit key; audit ${doc.audit_id}, verdict ${doc.verdict}`
                : `INVALID certificate${failed}`),
    h("ul", { class: "checks", id: "verify-checks" }, out.checks.map((c) =>
      h("li", { class: c.ok === true ? "pass" : c.ok === false ? "fail" : "skip", "data-check": c.name }, `${c.name}: ${c.detail}`))));
}

export async function verify(view) {
  const file = h("input", { type: "file", id: "certificate-file", accept: "application/json,.json" });
  const text = h("textarea", { id: "certificate-text", placeholder: "…or paste the certificate JSON here" });
  const box = h("div", {});
  file.addEventListener("change", async () => {
    if (!file.files.length) return;
    text.value = await file.files[0].text();
    await showCheck(box, text.value);
  });
  view.replaceChildren(h("h1", {}, "Check a certificate"),
    h("div", { class: "panel" },
      h("p", {}, "The signature is checked in this browser (WebCrypto, Ed25519) against the service's public key ",
        h("code", {}, "/v1/keys/audit-public"), "; the audit record's chain hash is recomputed from the certificate, " +
        "and each field is compared with the service's audit record, so a change is named."),
      h("label", {}, "certificate file", file), text,
      h("p", {}, h("button", { type: "button", id: "check", onclick: () => showCheck(box, text.value) }, "Check"))),
    box);
}
