// The console's page: plain JavaScript, no framework and no build step.
// It reads the console's JSON API with the operator's token and follows
// the live event stream (server-sent events) for migrations in progress.
"use strict";

const TOKEN_KEY = "lpm.token";
const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const kid of kids) if (kid !== undefined && kid !== null) e.append(kid);
  return e;
};

// What the page knows: the last answers of the API, and the migrations
// followed live (id -> {partition, source, target, phase, pct, rounds}).
const state = { hosts: [], partitions: [], migrations: [], live: new Map(), source: null };

// ---- the API ----

class AuthError extends Error {}

async function api(method, path, body) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const opts = { method, headers: { Authorization: "Bearer " + token } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (r.status === 401) throw new AuthError((data && data.error) || "not authenticated");
  if (!r.ok) throw new Error(`${method} ${path}: ${(data && data.error) || r.status}`);
  return data;
}

// The API answers lists either bare or in an object ({"hosts": [...]}).
function list(data, key) {
  if (Array.isArray(data)) return data;
  if (data && Array.isArray(data[key])) return data[key];
  return [];
}

function showError(e) {
  if (e instanceof AuthError) return logout(e.message);
  $("#error").textContent = e ? String(e.message || e) : "";
}

// ---- formatting ----

function mib(bytes) {
  if (bytes === undefined || bytes === null) return "?";
  if (bytes >= 1 << 30) return (bytes / (1 << 30)).toFixed(1) + " GiB";
  return Math.round(bytes / (1 << 20)) + " MiB";
}

function bar(used, total, label) {
  const frac = total > 0 ? Math.min(1, used / total) : 0;
  const b = el("div", { class: "bar" + (frac > 0.9 ? " full" : frac > 0.75 ? " high" : ""), title: label });
  const fill = el("span");
  fill.style.width = (frac * 100).toFixed(1) + "%";
  b.append(fill, el("em", {}, label));
  return b;
}

function badge(text) {
  const t = String(text || "unknown").toLowerCase();
  return el("span", { class: "badge " + t.replace(/[^a-z_]/g, "_") }, t);
}

// A field under one of several names: the page follows the console's
// JSON without breaking on a renamed or nested field.
function pick(o, ...names) {
  for (const n of names) {
    let v = o;
    for (const part of n.split(".")) v = v === undefined || v === null ? undefined : v[part];
    if (v !== undefined && v !== null) return v;
  }
  return undefined;
}

// ---- hosts and partitions ----

function hostState(h) {
  if (pick(h, "maintenance")) return "maintenance";
  return pick(h, "status") || "unknown";
}

function renderHosts() {
  const body = $("#hosts tbody");
  body.replaceChildren();
  for (const h of state.hosts) {
    const name = pick(h, "name");
    // lpmd's HostInfo: memory_bytes is what partitions may hold (used plus
    // available), cpus what they may use, cpus_reserved their limits.
    const memTotal = pick(h, "capacity.memory_bytes");
    const memFree = pick(h, "capacity.memory_available_bytes");
    const memUsed = memTotal !== undefined && memFree !== undefined ? memTotal - memFree : undefined;
    const cpuTotal = pick(h, "capacity.cpus");
    const cpuUsed = pick(h, "capacity.cpus_reserved");
    const counted = pick(h, "partitions");
    const parts = typeof counted === "number" ? counted : state.partitions.filter((p) => pick(p, "host") === name).length;
    const maint = pick(h, "maintenance");
    body.append(el("tr", { "data-host": name },
      el("td", {}, name),
      el("td", {}, badge(hostState(h))),
      el("td", {}, memTotal ? bar(memUsed || 0, memTotal, `${mib(memUsed)} of ${mib(memTotal)}`) : "?"),
      el("td", {}, cpuTotal ? bar(cpuUsed || 0, cpuTotal, `${(+cpuUsed || 0).toFixed(1)} of ${(+cpuTotal).toFixed(1)}`) : "?"),
      el("td", {}, String(parts)),
      el("td", {},
        maint
          ? el("button", { class: "release", onclick: () => release(name) }, "Release")
          : el("button", { class: "evacuate", onclick: () => policy("evacuate", name) }, "Evacuate"))));
  }
}

function hostNames() {
  return state.hosts.map((h) => pick(h, "name")).filter((n) => n);
}

// The rows are rebuilt only when what they hold changed (a partition
// came, went, moved or changed state, or the hosts changed): a refresh
// does not replace a button under the operator's pointer.
let partitionsShown = "";

function renderPartitions() {
  const body = $("#partitions tbody");
  const key = JSON.stringify([hostNames(), state.partitions.map((p) => [pick(p, "name", "spec.name"), pick(p, "host"), pick(p, "state")])]);
  if (key === partitionsShown) {
    for (const p of state.partitions) {
      const cell = body.querySelector(`tr[data-partition="${CSS.escape(pick(p, "name", "spec.name"))}"] .memory`);
      if (cell) cell.textContent = mib(pick(p, "memory_current", "memory", "spec.memory"));
    }
    return;
  }
  partitionsShown = key;
  body.replaceChildren();
  for (const p of state.partitions) {
    const name = pick(p, "name", "spec.name");
    const host = pick(p, "host");
    const st = pick(p, "state") || (pick(p, "error") ? "unreachable" : "unknown");
    const target = el("select", { class: "target", "aria-label": "target host of " + name });
    for (const h of hostNames()) if (h !== host) target.append(el("option", { value: h }, h));
    const running = st === "running";
    body.append(el("tr", { "data-partition": name },
      el("td", {}, name),
      el("td", {}, badge(st)),
      el("td", { class: "placement" }, host || "?"),
      el("td", { class: "memory" }, mib(pick(p, "memory_current", "memory", "spec.memory"))),
      el("td", {}, target),
      el("td", {},
        el("button", { class: "validate", onclick: () => validate(name, target.value) }, "Validate"), " ",
        el("button", { class: "migrate", disabled: running ? null : "", onclick: () => migrate(name, target.value) }, "Migrate"), " ",
        running ? el("button", { class: "stop", onclick: () => stopPartition(name) }, "Stop") : null,
        st === "stopped" ? el("button", { class: "start", onclick: () => startPartition(name) }, "Start") : null)));
  }
}

// ---- migrations ----

function migrationId(m) { return String(pick(m, "id")); }

function outcome(m) {
  return pick(m, "state", "outcome");
}

// As the console's MigrationRow::ended: these states are not ended yet.
function isLive(m) {
  return ["running", "stopping", "starting"].includes(String(outcome(m)));
}

function renderHistory() {
  const body = $("#history tbody");
  body.replaceChildren();
  const done = state.migrations.filter((m) => !isLive(m) && !state.live.has(migrationId(m)));
  for (const m of done.slice().reverse()) {
    const report = pick(m, "report");
    body.append(el("tr", { "data-migration": migrationId(m) },
      el("td", {}, migrationId(m)),
      el("td", {}, pick(m, "partition") || "?"),
      el("td", {}, pick(m, "source") || "?"),
      el("td", {}, pick(m, "target") || "?"),
      el("td", { class: "outcome" }, badge(outcome(m))),
      el("td", {}, report ? el("details", { class: "report" }, el("summary", {}, summarize(report)), el("pre", {}, JSON.stringify(report, null, 2))) : "")));
  }
}

// One line of a migration's report (lpm_migrate's Report).
function summarize(r) {
  if (Array.isArray(r)) return `${r.length} checks`;
  const parts = [];
  const ms = (v) => (v >= 1000 ? (v / 1000).toFixed(1) + " s" : Math.round(v) + " ms");
  if (typeof r.downtime_ms === "number") parts.push(`downtime ${ms(r.downtime_ms)}`);
  if (typeof r.total_ms === "number") parts.push(`total ${ms(r.total_ms)}`);
  if (Array.isArray(r.rounds)) parts.push(`${r.rounds.length} rounds`);
  if (typeof r.bytes_total === "number") parts.push(mib(r.bytes_total) + " sent");
  return parts.length ? parts.join(", ") : "report";
}

// How far a migration is, from its phase and, during pre-copy, from what
// was sent against what is still dirty. Pre-copy has no known end, so the
// estimate may go back between rounds; the bar only moves forward.
function estimate(phase, bytes, pages) {
  const p = String(phase || "").toLowerCase();
  if (/complete|done|finish/.test(p)) return 100;
  if (/handover|restor|resum/.test(p)) return 95;
  if (/switch|stop|final|freez/.test(p)) return 90;
  if (/prepar|valid/.test(p)) return 2;
  if (/precopy|copy|round/.test(p)) {
    const left = (pages || 0) * 4096;
    const frac = bytes + left > 0 ? bytes / (bytes + left) : 0;
    return 5 + Math.round(frac * 80);
  }
  return 2;
}

function liveOf(id, seed = {}) {
  let m = state.live.get(id);
  if (!m) {
    m = { id, partition: seed.partition || "?", source: seed.source || "?", target: seed.target || "?", phase: "starting", pct: 0, rounds: [] };
    state.live.set(id, m);
  }
  return m;
}

function onProgress(ev) {
  const id = String(pick(ev, "id", "migration", "migration_id"));
  const m = liveOf(id, ev);
  if (ev.partition) m.partition = ev.partition;
  const round = pick(ev, "round") || 0;
  const pages = pick(ev, "pages", "dirty_pages") || 0;
  const bytes = pick(ev, "bytes", "sent_bytes") || 0;
  m.phase = pick(ev, "phase") || m.phase;
  m.pct = Math.max(m.pct, estimate(m.phase, bytes, pages));
  const last = m.rounds[m.rounds.length - 1];
  if (last && last.round === round) { last.pages = pages; last.bytes = bytes; }
  else m.rounds.push({ round, pages, bytes });
  renderLive();
}

function onFinished(ev) {
  const id = String(pick(ev, "id", "migration", "migration_id"));
  state.live.delete(id);
  renderLive();
  refresh();
}

function renderLive() {
  const box = $("#live-migrations");
  if (state.live.size === 0) { box.replaceChildren(el("p", { class: "none" }, "none")); return; }
  // Cards are kept across renders so a progress bar is updated in place.
  const keep = new Set();
  for (const m of state.live.values()) {
    keep.add(m.id);
    let card = box.querySelector(`.migration[data-migration="${CSS.escape(m.id)}"]`);
    if (!card) {
      card = el("div", { class: "migration", "data-migration": m.id },
        el("div", { class: "title" }),
        el("button", { class: "stop-migration", onclick: () => stopMigration(m.id) }, "Stop"),
        el("progress", { max: "100", value: "0" }),
        el("div", { class: "facts" }),
        el("canvas", { width: "600", height: "120" }));
      box.querySelector(".none")?.remove();
      box.append(card);
    }
    $(".title", card).textContent = `${m.partition}: ${m.source} → ${m.target}`;
    $("progress", card).value = m.pct;
    $("progress", card).textContent = m.pct + "%";
    const last = m.rounds[m.rounds.length - 1] || { round: 0, pages: 0, bytes: 0 };
    $(".facts", card).textContent = `${m.phase}, round ${last.round}, ${last.pages} pages dirty, ${mib(last.bytes)} sent, ${m.pct}%`;
    chart($("canvas", card), m.rounds);
  }
  for (const card of box.querySelectorAll(".migration")) if (!keep.has(card.dataset.migration)) card.remove();
}

// Pages (bars, left scale) and bytes (line, right scale) per round.
function chart(canvas, rounds) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600, h = canvas.clientHeight || 120;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  g.font = "10px system-ui, sans-serif";
  const pad = { l: 44, r: 52, t: 14, b: 16 };
  const n = Math.max(rounds.length, 1);
  const maxPages = Math.max(1, ...rounds.map((r) => r.pages));
  const maxBytes = Math.max(1, ...rounds.map((r) => r.bytes));
  const cw = (w - pad.l - pad.r) / n, ch = h - pad.t - pad.b;
  g.fillStyle = "#90cdf4";
  rounds.forEach((r, i) => {
    const bh = (r.pages / maxPages) * ch;
    g.fillRect(pad.l + i * cw + cw * 0.15, pad.t + ch - bh, cw * 0.7, bh);
  });
  g.strokeStyle = "#c05621"; g.lineWidth = 2; g.beginPath();
  rounds.forEach((r, i) => {
    const x = pad.l + i * cw + cw / 2, y = pad.t + ch - (r.bytes / maxBytes) * ch;
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
  g.fillStyle = "#4a5568";
  g.fillText(`${maxPages} pages`, 2, pad.t);
  g.fillText(mib(maxBytes), w - pad.r + 4, pad.t);
  g.fillText("pages per round (bars), bytes sent (line)", pad.l, h - 4);
}

// ---- actions ----

async function confirmText(title, text) {
  const d = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-body").textContent = text;
  $("#confirm-ok").hidden = false;
  d.showModal();
  return new Promise((resolve) => d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true }));
}

function inform(title, text) {
  const d = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-body").textContent = text;
  $("#confirm-ok").hidden = true;
  d.showModal();
}

function checksText(data) {
  const checks = list(data, "checks");
  if (!checks.length) return JSON.stringify(data, null, 2);
  return checks.map((c) => {
    const ok = pick(c, "ok", "passed");
    const mark = ok === false || pick(c, "error") ? "✗" : "✓";
    return `${mark} ${pick(c, "name", "check") || ""}: ${pick(c, "detail", "message", "error", "reason") || ""}`;
  }).join("\n");
}

async function validate(name, target) {
  try {
    const data = await api("POST", `/v1/partitions/${encodeURIComponent(name)}/validate`, { target });
    inform(`Validation of ${name} to ${target}`, checksText(data));
  } catch (e) { showError(e); }
}

async function migrate(name, target) {
  if (!target) return showError(new Error("no target host"));
  try {
    const host = pick(state.partitions.find((p) => pick(p, "name", "spec.name") === name) || {}, "host");
    const data = await api("POST", "/v1/migrations", { partition: name, target, options: {} });
    const id = String(pick(data || {}, "id"));
    liveOf(id, { partition: name, source: host, target });
    renderLive();
  } catch (e) { showError(e); }
}

async function stopMigration(id) {
  try { await api("POST", `/v1/migrations/${encodeURIComponent(id)}/stop`); refresh(); } catch (e) { showError(e); }
}

async function stopPartition(name) {
  if (!(await confirmText(`Stop ${name}?`, "The partition's processes are stopped."))) return;
  try { await api("POST", `/v1/partitions/${encodeURIComponent(name)}/stop`); refresh(); } catch (e) { showError(e); }
}

async function startPartition(name) {
  try { await api("POST", `/v1/partitions/${encodeURIComponent(name)}/start`); refresh(); } catch (e) { showError(e); }
}

async function release(host) {
  try { await api("POST", `/v1/hosts/${encodeURIComponent(host)}/release`); refresh(); } catch (e) { showError(e); }
}

function planPath(kind, host) {
  return kind === "evacuate" ? `/v1/hosts/${encodeURIComponent(host)}/evacuate` : `/v1/${kind}`;
}

function planText(plan) {
  const text = pick(plan || {}, "text", "render", "dry_run", "plan.text");
  return typeof text === "string" ? text : JSON.stringify(plan, null, 2);
}

// A policy is shown as its dry-run plan first and carried out only once
// the operator confirms that plan.
async function policy(kind, host) {
  try {
    const path = planPath(kind, host);
    const plan = await api("POST", path, { dry_run: true });
    const title = kind === "evacuate" ? `Evacuate ${host}: the plan` : `${kind[0].toUpperCase() + kind.slice(1)}: the plan`;
    if (!(await confirmText(title, planText(plan)))) return;
    await api("POST", path, { dry_run: false });
    refresh();
  } catch (e) { showError(e); }
}

// ---- the live stream ----

// The stream's events are the serde form of the console's `Event`: either
// {"type": "...", ...} or {"Variant": {...}}.
function normalize(ev) {
  if (ev && typeof ev.type === "string") return { kind: ev.type, data: ev };
  if (ev && typeof ev.kind === "string") return { kind: ev.kind, data: ev };
  const keys = Object.keys(ev || {});
  if (keys.length === 1 && typeof ev[keys[0]] === "object") return { kind: keys[0], data: ev[keys[0]] };
  return { kind: "", data: ev };
}

function onEvent(raw) {
  let ev;
  try { ev = JSON.parse(raw); } catch (_) { return; }
  const { kind, data } = normalize(ev);
  const k = kind.toLowerCase().replace(/_/g, "");
  if (k.includes("progress") && k.includes("migration")) onProgress(data);
  else if (k.includes("migration") && /finish|end|done/.test(k)) onFinished(data);
  else if (k.includes("host") || k.includes("partition")) refresh();
  // The stream dropped events for this page (it read too slowly): read
  // the whole state again.
  else if (k.includes("lagged")) refresh();
  else if (k.includes("plan")) refresh();
}

function connect() {
  if (state.source) state.source.close();
  const token = sessionStorage.getItem(TOKEN_KEY);
  // EventSource cannot send an Authorization header: the stream alone
  // takes the token as a query parameter (see docs/console.md).
  const src = new EventSource("/v1/events?token=" + encodeURIComponent(token));
  state.source = src;
  const live = $("#live");
  src.onopen = () => { live.textContent = "live"; live.className = "badge on"; };
  src.onmessage = (m) => onEvent(m.data);
  src.onerror = () => {
    live.textContent = "reconnecting"; live.className = "badge off";
    // A stream refused for its token does not come back: check the token.
    api("GET", "/v1/hosts").catch(showError);
  };
}

// ---- start ----

async function refresh() {
  try {
    const [hosts, partitions, migrations] = await Promise.all([
      api("GET", "/v1/hosts"), api("GET", "/v1/partitions"), api("GET", "/v1/migrations")]);
    state.hosts = list(hosts, "hosts");
    state.partitions = list(partitions, "partitions");
    state.migrations = list(migrations, "migrations");
    for (const m of state.migrations) {
      const id = migrationId(m);
      if (isLive(m)) {
        const l = liveOf(id, { partition: pick(m, "partition"), source: pick(m, "source"), target: pick(m, "target") });
        l.source = pick(m, "source") || l.source;
        l.target = pick(m, "target") || l.target;
        // A page opened mid-migration starts from its last progress.
        if (m.progress && l.rounds.length === 0) onProgress({ ...m.progress, id, partition: l.partition, source: l.source, target: l.target });
      } else state.live.delete(id);
    }
    showError(null);
    renderHosts(); renderPartitions(); renderLive(); renderHistory();
  } catch (e) { showError(e); }
}

function logout(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.source) { state.source.close(); state.source = null; }
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = why || "";
}

async function login(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    await api("GET", "/v1/hosts");
  } catch (e) {
    return logout(e instanceof AuthError ? "token refused" : String(e.message || e));
  }
  $("#login").hidden = true;
  $("#app").hidden = false;
  connect();
  await refresh();
}

$("#login-form").addEventListener("submit", (e) => { e.preventDefault(); login($("#token").value.trim()); });
$("#logout").addEventListener("click", () => logout());
for (const b of document.querySelectorAll("button.policy")) b.addEventListener("click", () => policy(b.dataset.policy));
if (sessionStorage.getItem(TOKEN_KEY)) login(sessionStorage.getItem(TOKEN_KEY)); else logout();
