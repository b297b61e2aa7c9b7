// In-browser certificate check (api/certificates.py, done again with WebCrypto): the Ed25519 signature over
// the canonical JSON of the document without `signature`, the audit record's chain hash recomputed from its
// fields, and, when the key may read it, each field against the service's own audit record, so a failure
// says which field was changed.
//
// Canonical JSON is Python's json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False). JSON.parse
// would lose what Python wrote for a number (1.0 becomes 1), so certificates are parsed keeping each number's
// literal text and written back with it.

export class Num {
  constructor(text) { this.text = text; }
  valueOf() { return Number(this.text); }
}

const NUMBER = /-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/y;
const STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;

export function parse(text) {
  let i = 0;
  const ws = () => { while (i < text.length && " \t\n\r".includes(text[i])) i++; };
  const fail = (what) => { throw new SyntaxError(`not valid JSON at character ${i}: ${what}`); };
  function value() {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const obj = Object.create(null);
      ws();
      if (text[i] === "}") { i++; return obj; }
      for (;;) {
        ws();
        if (text[i] !== '"') fail("expected a key");
        const k = string();
        ws();
        if (text[i++] !== ":") fail("expected ':'");
        obj[k] = value();
        ws();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === "}") { i++; return obj; }
        fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      i++;
      const arr = [];
      ws();
      if (text[i] === "]") { i++; return arr; }
      for (;;) {
        arr.push(value());
        ws();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === "]") { i++; return arr; }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return string();
    for (const [lit, v] of [["true", true], ["false", false], ["null", null]]) {
      if (text.startsWith(lit, i)) { i += lit.length; return v; }
    }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) fail("unexpected token");
    i += m[0].length;
    return new Num(m[0]);
  }
  function string() {
    STRING.lastIndex = i;
    const m = STRING.exec(text);
    if (!m) fail("bad string");
    i += m[0].length;
    return JSON.parse(m[0]);
  }
  const v = value();
  ws();
  if (i !== text.length) fail("trailing data");
  return v;
}

export function canonical(v) {
  if (v === null) return "null";
  if (v instanceof Num) return v.text;
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "number") return String(v);
  if (typeof v === "string") return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  const keys = Object.keys(v).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(v[k])}`).join(",")}}`;
}

// Plain JS values, for comparing with the API's JSON: numbers by value, timestamps by instant.
function plain(v) {
  if (v instanceof Num) return Number(v.text);
  if (typeof v === "string") return normaliseTime(v);
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === "object") return Object.fromEntries(Object.keys(v).sort().map((k) => [k, plain(v[k])]));
  return v;
}

function normaliseTime(s) {
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?(Z|\+00:00)$/.exec(s);
  return m ? `${m[1]}.${(m[2] || "").padEnd(6, "0")}Z` : s;
}

const utf8 = (s) => new TextEncoder().encode(s);
const hex = (buf) => [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0")).join("");
const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
const sha256 = async (bytes) => hex(await crypto.subtle.digest("SHA-256", bytes));

export const FORMAT = "unlearnd-certificate/1";
const RENAMED = { id: "audit_id" };

// `doc` from parse(); `publicKey` the JSON of GET /v1/keys/audit-public; `serviceRecord` the JSON of
// GET /v1/audits/{audit_id} or an Error saying why it could not be read. Returns {valid, checks, failedFields}.
export async function verify(doc, publicKey, serviceRecord) {
  const checks = [];
  const add = (name, ok, detail) => checks.push({ name, ok, detail });
  if (!doc || typeof doc !== "object" || Array.isArray(doc) || doc.format !== FORMAT) {
    add("format", false, `not an ${FORMAT} document`);
    return { valid: false, checks, failedFields: [] };
  }
  add("format", true, FORMAT);
  const raw = b64(publicKey.public_key);
  const keyId = (await sha256(raw)).slice(0, 16);
  const sig = doc.signature;
  let signatureOk = false;
  if (!sig || typeof sig !== "object" || sig.alg !== "Ed25519" || typeof sig.value !== "string") {
    add("signature", false, "the signature block is missing or malformed");
  } else if (sig.key_id !== keyId) {
    add("signing key", false, `signed by key ${sig.key_id}, not by this service's key ${keyId}`);
  } else {
    add("signing key", true, `key ${keyId} (the service's audit key)`);
    const unsigned = Object.create(null);
    for (const k of Object.keys(doc)) if (k !== "signature") unsigned[k] = doc[k];
    try {
      const key = await crypto.subtle.importKey("raw", raw, { name: "Ed25519" }, false, ["verify"]);
      signatureOk = await crypto.subtle.verify({ name: "Ed25519" }, key, b64(sig.value), utf8(canonical(unsigned)));
      add("signature", signatureOk, signatureOk ? "Ed25519 signature matches the document's content"
                                                : "the signature does not match the document's content: something was changed");
    } catch (e) {
      add("signature", false, `this browser cannot check Ed25519 signatures (${e.message}); use unlearnd certificate verify`);
    }
  }
  let chainOk = false;
  try {
    const fields = Object.create(null);
    for (const name of doc.chained_fields) fields[name] = doc[RENAMED[name] || name];
    const recomputed = await sha256(utf8(canonical(fields) + String(doc.prev_hash)));
    chainOk = recomputed === doc.hash;
    add("chain hash", chainOk, chainOk ? `the audit record's fields hash to ${doc.hash.slice(0, 16)}…`
                                       : "the audit record's fields no longer hash to the certificate's chain hash");
  } catch {
    add("chain hash", false, "the certificate lacks fields of its audit record");
  }
  const failedFields = [];
  if (serviceRecord instanceof Error) {
    add("service record", null, `not compared: ${serviceRecord.message}`);
  } else if (serviceRecord) {
    const names = [...(doc.chained_fields || []), "hash"];
    for (const name of names) {
      if (!(name in serviceRecord)) continue; // not shown by the API (tenant_id): the chain hash covers it
      const mine = doc[RENAMED[name] || name];
      if (JSON.stringify(plain(mine)) !== JSON.stringify(plain(serviceRecord[name]))) failedFields.push(RENAMED[name] || name);
    }
    add("service record", failedFields.length === 0,
        failedFields.length ? `differs from the service's audit record in: ${failedFields.join(", ")}`
                            : "every field equals the service's audit record");
  }
  if (!signatureOk && failedFields.length === 0 && chainOk) {
    add("changed field", false, "the audit record's fields are intact: a field outside it was changed " +
        "(issued_at, record_salt, record_hash_algorithm, adapter_version, issuer, chained_fields or the signature)");
  }
  const valid = checks.every((c) => c.ok !== false);
  return { valid, checks, failedFields };
}
