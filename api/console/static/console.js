// The console's router: hash routes (#/requests, #/requests/req_…, #/audits, #/audits/aud_…, #/models,
// #/verify), a sign-in form when no key is stored, live refresh while something is running.
import { session } from "./api.js";
import { h } from "./dom.js";
import * as views from "./views.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
let stop = null; // the current view's cleanup (timers)

const routes = [
  [/^#\/requests\/([\w-]+)$/, views.request],
  [/^#\/audits\/([\w-]+)$/, views.audit],
  [/^#\/requests$/, views.requests],
  [/^#\/audits$/, views.audits],
  [/^#\/models$/, views.models],
  [/^#\/verify$/, views.verify],
];

function signIn() {
  const input = h("input", { type: "password", id: "api-key", autocomplete: "off", required: true, placeholder: "uk_…" });
  const form = h("form", { id: "sign-in", class: "panel", method: "post", action: "#",
    onsubmit: (e) => {
      e.preventDefault();
      session.signIn(input.value);
      input.value = "";
      location.hash = "#/requests";
      render();
    } },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Your API key stays in this tab's session storage and is sent only as an " +
      "Authorization header to this service; the service's own scopes decide what you can see."),
    h("label", {}, "API key", input),
    h("p", {}, h("button", { type: "submit" }, "Sign in")));
  view.replaceChildren(form);
  input.focus();
}

async function render() {
  if (stop) { stop(); stop = null; }
  if (!session.key()) { nav.hidden = true; signIn(); return; }
  nav.hidden = false;
  const hash = location.hash || "#/requests";
  for (const a of nav.querySelectorAll("a")) a.classList.toggle("active", hash.startsWith(`#/${a.dataset.nav}`));
  for (const [pattern, fn] of routes) {
    const m = pattern.exec(hash);
    if (m) { stop = (await fn(view, ...m.slice(1))) || null; return; }
  }
  location.hash = "#/requests";
}

document.getElementById("sign-out").addEventListener("click", () => { session.signOut(); render(); });
window.addEventListener("hashchange", render);
render();
