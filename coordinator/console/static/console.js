// Faultline console: live fragments over server-sent events, bulk-operation progress, row selection.
// No inline script anywhere (the CSP forbids it); every fragment arrives escaped by the server.
"use strict";

(function () {
  const RECONNECT_NOTE_CLASS = "stale";
  const OP_POLL_MS = 1000;

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  // Fragments from a live stream are shared by every browser of a key: their forms carry no token.
  function fillCsrf(root) {
    const token = csrfToken();
    root.querySelectorAll('input[name="csrf"]').forEach(function (input) {
      if (!input.value) { input.value = token; }
    });
  }

  // A live swap must not take the keyboard focus away (a Pause button in the overview, say): remember which
  // control had it by its form's action and label, and focus the same control in the new fragment.
  function focusKey(root) {
    const active = document.activeElement;
    if (!active || !root.contains(active)) { return null; }
    const form = active.closest("form");
    const link = active.closest("a");
    if (form) { return { kind: "form", action: form.getAttribute("action"), label: active.textContent }; }
    if (link) { return { kind: "link", href: link.getAttribute("href") }; }
    return null;
  }

  function restoreFocus(root, key) {
    if (!key) { return; }
    let target = null;
    if (key.kind === "form") {
      root.querySelectorAll("form").forEach(function (f) {
        if (!target && f.getAttribute("action") === key.action) {
          f.querySelectorAll("button").forEach(function (b) { if (!target && b.textContent === key.label) { target = b; } });
        }
      });
    } else {
      root.querySelectorAll("a").forEach(function (a) { if (!target && a.getAttribute("href") === key.href) { target = a; } });
    }
    if (target) { target.focus(); }
  }

  function live(el) {
    const topic = el.getAttribute("data-live");
    const source = new EventSource("/events?topic=" + encodeURIComponent(topic));
    let last = null;
    function show(event) {
      if (event.data === last) { return; }
      last = event.data;
      const refocus = focusKey(el);
      el.innerHTML = event.data;
      restoreFocus(el, refocus);
      el.classList.remove(RECONNECT_NOTE_CLASS);
      fillCsrf(el);
      el.dispatchEvent(new CustomEvent("faultline:updated", { bubbles: true }));
    }
    source.addEventListener("update", show);
    source.addEventListener("final", function (event) { show(event); source.close(); });
    source.onerror = function () { el.classList.add(RECONNECT_NOTE_CLASS); };
    window.addEventListener("pagehide", function () { source.close(); });
  }

  function poll(el) {
    const url = el.getAttribute("data-poll");
    function tick() {
      fetch(url, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(new Error(String(r.status))); })
        .then(function (html) {
          el.innerHTML = html;
          if (!el.querySelector("[data-final]")) { window.setTimeout(tick, OP_POLL_MS); }
        })
        .catch(function () { el.classList.add(RECONNECT_NOTE_CLASS); window.setTimeout(tick, OP_POLL_MS * 3); });
    }
    tick();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(live);
    document.querySelectorAll("[data-poll]").forEach(poll);
    fillCsrf(document);
  });

  document.addEventListener("change", function (event) {
    const box = event.target;
    if (box instanceof HTMLInputElement && box.hasAttribute("data-check-all")) {
      const form = box.closest("form");
      if (form) {
        form.querySelectorAll('input[type="checkbox"][name="id"]').forEach(function (b) { b.checked = box.checked; });
      }
    }
  });

  document.addEventListener("submit", function (event) {
    if (event.target instanceof HTMLFormElement) { fillCsrf(event.target); }
  }, true);
})();
