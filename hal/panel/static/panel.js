"use strict";
/*
 * The operation panel's page. It renders the views the panel service pushes (/events) and sends
 * the person's touches back (/pin, /action, /lang). Every text comes translated from the service;
 * the page builds its elements with DOM APIs and sets text with textContent only (job titles are
 * hostile input). Org data (org name, user, job titles, queue) lives only in `view` and in the
 * elements of the screen showing it: on idle, on a session change and when the service is lost,
 * every element is dropped and the variables are reset. The PIN's digits live only in `pin`
 * (numbers), emptied on submit, cancel and screen change. Element ids: see hal/panel/web.py.
 */
(function () {
  const screen = document.getElementById("screen");
  const langButtons = { en: document.getElementById("lang-en"), ja: document.getElementById("lang-ja") };
  const PIN_MAX = 16;
  const BUSY_MS = 3000;

  let view = null;            // the view on screen
  let labels = {};            // the panel's own words in the current language (never org data)
  let selected = new Set();   // job ids ticked on this session's jobs screen
  let pin = [];               // the digits typed, as numbers
  let pinDeadline = null;     // performance.now() at which the PIN pad times out
  let idleDeadline = null;    // ... at which the screen returns to idle by itself
  let busy = false;           // an action is on its way
  let busyTimer = null;
  let source = null;

  // -- small helpers ------------------------------------------------------------------------

  function fmt(template, fields) {
    return String(template || "").replace(/\{(\w+)\}/g, (m, name) => (name in fields ? String(fields[name]) : m));
  }

  function el(tag, props, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "class") node.className = value;
      else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role") node.setAttribute(key, value);
      else node[key] = value;
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function button(id, text, onClick, cls) {
    const node = el("button", { type: "button", id: id, class: cls || "" }, text);
    node.addEventListener("click", onClick);
    return node;
  }

  function secondsUntil(deadline) {
    return Math.max(0, Math.ceil((deadline - performance.now()) / 1000));
  }

  function clearPin() {
    pin.fill(0);
    pin.length = 0;
  }

  function purge() {
    clearPin();
    selected = new Set();
    view = null;
    pinDeadline = idleDeadline = null;
    screen.replaceChildren();
  }

  function setBusy(flag) {
    busy = flag;
    clearTimeout(busyTimer);
    if (flag) busyTimer = setTimeout(() => setBusy(false), BUSY_MS);
    for (const node of screen.querySelectorAll("button.act")) node.disabled = flag || node.dataset.off === "1";
  }

  function post(path, body, type) {
    return fetch(path, {
      method: "POST", headers: { "Content-Type": type }, body: body,
      cache: "no-store", credentials: "same-origin", redirect: "error", referrerPolicy: "no-referrer",
    }).then((res) => res.ok, () => false);
  }

  function act(action, jobs, always) {
    if ((busy && !always) || !view) return;
    const body = { action: action };
    if (view.session !== null && view.session !== undefined) body.session = view.session;
    if (jobs) body.jobs = jobs;
    setBusy(true);
    post("/action", JSON.stringify(body), "application/json").then((ok) => { if (!ok) setBusy(false); });
  }

  // -- rendering ----------------------------------------------------------------------------

  function render(next) {
    const prev = view;
    const sameSession = prev !== null && next.session !== null && prev.session === next.session;
    if (!sameSession || next.screen === "idle" || next.screen === "not-connected") purge();
    else if (prev.screen !== next.screen) clearPin();
    const focused = document.activeElement && document.activeElement.id;
    screen.replaceChildren();
    view = next;
    labels = next.labels || labels;
    busy = false;
    clearTimeout(busyTimer);

    document.documentElement.lang = next.lang || "en";
    screen.dataset.screen = next.screen;
    screen.dataset.session = next.session === null || next.session === undefined ? "" : String(next.session);
    for (const [lang, node] of Object.entries(langButtons)) node.setAttribute("aria-pressed", String(lang === next.lang));
    langButtons.en.parentElement.setAttribute("aria-label", labels.language || "Language");
    pinDeadline = next.pin && Number.isInteger(next.pin.remaining_s) ? performance.now() + next.pin.remaining_s * 1000 : null;
    idleDeadline = Number.isInteger(next.idle_in_s) ? performance.now() + next.idle_in_s * 1000 : null;

    if (next.printer) screen.append(el("p", { id: "printer", class: "printer", role: "status" }, next.printer));
    (BUILDERS[next.screen] || buildMessage)(next);
    const foot = el("div", { class: "foot" });
    if (next.others) foot.append(el("span", { id: "others" }, next.others));
    if (idleDeadline !== null) foot.append(el("span", { id: "idle-in" }));
    screen.append(foot);
    tick();

    const again = focused && document.getElementById(focused);
    if (again && screen.contains(again)) again.focus();
  }

  function line(next) {
    return el("h1", { id: "line", "aria-live": "polite" }, next.line);
  }

  function buildMessage(next) {
    screen.append(line(next));
    screen.append(el("div", { class: "center" }));
    if (next.logged_in) logoutBar();
  }

  function logoutBar() {
    const actions = el("div", { class: "actions" });
    actions.append(button("logout", labels.logout, () => act("logout"), "act"));
    screen.append(actions);
  }

  function buildIdle(next) {
    screen.append(line(next));
    const hint = el("div", { class: "center" });
    hint.append(el("div", { class: "card-hint", role: "img", "aria-label": labels["tap-card"] || "" }));
    screen.append(hint);
  }

  function buildProgress(next) {
    screen.append(line(next));
    const center = el("div", { class: "center" });
    center.append(el("div", { class: "spinner", "aria-hidden": "true" }));
    screen.append(center);
  }

  function buildReady(next) {
    screen.append(line(next));
    if (next.queue) screen.append(el("p", { id: "queue" }, next.queue));
    const actions = el("div", { class: "actions" });
    actions.append(button("choose", labels.choose, () => act("choose-next"), "act primary"));
    screen.append(actions);
  }

  function buildPin(next) {
    const layout = el("div", { class: "pin-layout" });
    const info = el("div", { class: "pin-info" });
    info.append(line(next));
    info.append(el("div", { id: "pin-dots", role: "img" }));
    if (next.pin && next.pin.attempts) info.append(el("p", { id: "pin-attempts" }, next.pin.attempts));
    if (pinDeadline !== null) info.append(el("p", { id: "pin-remaining" }));
    info.append(button("pin-cancel", labels.cancel, cancelPin, "danger"));
    const pad = el("div", { class: "keypad" });
    for (const d of [1, 2, 3, 4, 5, 6, 7, 8, 9]) pad.append(button("pin-key-" + d, d, () => addDigit(d), "act"));
    pad.append(button("pin-back", "⌫", backDigit, "act"));
    pad.lastChild.setAttribute("aria-label", labels.back || "");
    pad.append(button("pin-key-0", 0, () => addDigit(0), "act"));
    pad.append(button("pin-ok", labels.ok, submitPin, "act primary"));
    layout.append(info, pad);
    screen.append(layout);
    showDots();
  }

  function buildJobs(next) {
    screen.append(line(next));
    const jobs = next.jobs || [];
    const shown = new Set(jobs.map((job) => job.id));
    selected = new Set([...selected].filter((id) => shown.has(id)));
    screen.append(el("h2", { class: "list-title" }, jobs.length ? labels["jobs-heading"] : labels["no-held-jobs"]));
    const list = el("ul", { id: "jobs", class: "jobs" });
    for (const job of jobs) {
      const row = el("li", { id: "job-row-" + job.id });
      const label = el("label", { htmlFor: "job-" + job.id });
      const box = el("input", { type: "checkbox", id: "job-" + job.id, checked: selected.has(job.id) });
      box.addEventListener("change", () => toggle(job.id, box.checked, row));
      box.addEventListener("keydown", (e) => {
        if (e.key === "Enter") { e.preventDefault(); box.checked = !box.checked; toggle(job.id, box.checked, row); }
      });
      row.classList.toggle("checked", box.checked);
      label.append(box, el("span", { class: "title" }, job.title), el("span", { class: "detail" }, job.detail),
                   el("span", { class: "at" }, job.at));
      row.append(label);
      list.append(row);
    }
    screen.append(list);
    const actions = el("div", { class: "actions" });
    actions.append(
      button("print-selected", labels["print-selected"], () => act("print", [...selected]), "act primary"),
      button("print-all", labels["print-all"], () => act("print"), "act"),
      button("delete-selected", labels["delete-selected"], () => act("delete", [...selected]), "act danger"),
      button("logout", labels.logout, () => act("logout"), "act"));
    screen.append(actions);
    if (!jobs.length) document.getElementById("print-all").dataset.off = "1";
    showSelection();
  }

  function buildPrinting(next) {
    screen.append(line(next));
    const list = el("ul", { id: "printing", class: "jobs" });
    for (const job of next.printing || []) {
      const row = el("li", { id: "printing-" + job.id });
      const inner = el("div", { class: "row" });
      inner.append(el("span", { class: "title" }, job.title), el("span", { class: "state" }, job.state));
      row.append(inner);
      list.append(row);
    }
    screen.append(list);
    if (next.logged_in) logoutBar();
  }

  const BUILDERS = {
    idle: buildIdle, progress: buildProgress, ready: buildReady, pin: buildPin, jobs: buildJobs,
    printing: buildPrinting, message: buildMessage, "out-of-service": buildMessage, "not-connected": buildMessage,
  };

  // -- the jobs screen ----------------------------------------------------------------------

  function toggle(id, on, row) {
    if (on) selected.add(id); else selected.delete(id);
    row.classList.toggle("checked", on);
    showSelection();
  }

  function showSelection() {
    for (const id of ["print-selected", "delete-selected"]) {
      const node = document.getElementById(id);
      if (node) node.dataset.off = selected.size ? "0" : "1";
    }
    setBusy(busy);
  }

  // -- the PIN pad --------------------------------------------------------------------------

  function showDots() {
    const dots = document.getElementById("pin-dots");
    if (!dots) return;
    // digits typed here, or else those typed on a USB keypad (the firmware counts them)
    const count = pin.length || (view && view.pin && view.pin.typed) || 0;
    dots.replaceChildren(...Array.from({ length: count }, () => el("span", { class: "dot" })));
    dots.dataset.count = String(count);
    dots.setAttribute("aria-label", fmt(labels["pin-entered"], { n: count }));
    const ok = document.getElementById("pin-ok");
    if (ok) ok.dataset.off = pin.length ? "0" : "1";
    setBusy(busy);
  }

  function addDigit(d) {
    if (pin.length < PIN_MAX) pin.push(d);
    showDots();
  }

  function backDigit() {
    if (pin.length) { pin[pin.length - 1] = 0; pin.pop(); }
    showDots();
  }

  function cancelPin() {
    clearPin();
    showDots();
    act("pin-cancel", null, true);  // giving up is never held back by a PIN on its way
  }

  function submitPin() {
    if (busy || !pin.length) return;
    const body = new Uint8Array(pin.length);
    for (let i = 0; i < pin.length; i++) body[i] = 48 + pin[i];
    clearPin();
    showDots();
    setBusy(true);
    post("/pin", body, "application/octet-stream").then((ok) => {
      body.fill(0);
      if (!ok) setBusy(false);
    });
  }

  document.addEventListener("keydown", (e) => {
    if (!view || view.screen !== "pin" || e.ctrlKey || e.altKey || e.metaKey) return;
    if (e.key.length === 1 && e.key >= "0" && e.key <= "9") { e.preventDefault(); addDigit(e.key.charCodeAt(0) - 48); }
    else if (e.key === "Backspace") { e.preventDefault(); backDigit(); }
    else if (e.key === "Escape") { e.preventDefault(); cancelPin(); }
    else if (e.key === "Enter" && !(document.activeElement instanceof HTMLButtonElement)) { e.preventDefault(); submitPin(); }
  });

  // -- time left ----------------------------------------------------------------------------

  function tick() {
    const remaining = document.getElementById("pin-remaining");
    if (remaining && pinDeadline !== null) remaining.textContent = fmt(labels.remaining, { s: secondsUntil(pinDeadline) });
    const idle = document.getElementById("idle-in");
    if (idle && idleDeadline !== null) idle.textContent = fmt(labels["idle-in"], { s: secondsUntil(idleDeadline) });
  }
  setInterval(tick, 500);

  // -- language and the live feed -----------------------------------------------------------

  for (const [lang, node] of Object.entries(langButtons)) {
    node.addEventListener("click", () => post("/lang", JSON.stringify({ lang: lang }), "application/json"));
  }

  function lost() {
    render({
      screen: "not-connected", lang: view ? view.lang : document.documentElement.lang, session: null,
      line: labels["not-connected"] || "Panel not connected", printer: null, others: null, idle_in_s: null,
      labels: labels,
    });
  }

  function connect() {
    source = new EventSource("/events");
    source.addEventListener("view", (e) => render(JSON.parse(e.data)));
    source.addEventListener("error", () => {
      lost();
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);  // else it retries itself
    });
  }
  connect();
})();
