// The browser page: a key (if the service wants one) kept in sessionStorage, uploads, results
// and the cluster's load. No inline script: the page's Content-Security-Policy forbids it.
"use strict";
const KEY = "iraas-key";
const $ = id => document.getElementById(id);

function authHeaders() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (resp.status === 401) { signedOut("Your key was refused: it is wrong, or it was revoked."); }
  return resp;
}

function card(file) {
  const el = document.createElement("div");
  el.className = "card";
  el.innerHTML = '<img alt=""><div class="name"></div><div class="label">…</div>' +
                 '<div class="status">uploading</div><ol></ol>';
  el.querySelector("img").src = URL.createObjectURL(file);
  el.querySelector(".name").textContent = file.name;
  $("results").prepend(el);
  return el;
}

const rows = [];  // the results shown, for the table and its CSV

function remember(r) {
  if (r.status !== "done" && r.status !== "failed") return;
  const row = [r.name || "", r.status, r.label || r.error || "", r.confidence ?? "", r.timings?.total ?? "", r.id || ""];
  rows.push(row);
  const tr = document.createElement("tr");
  for (const v of row) { const td = document.createElement("td"); td.textContent = v; tr.append(td); }
  $("table").tBodies[0].prepend(tr);
  $("csv").disabled = false;
}

function csv() {
  // a file name that a spreadsheet would run as a formula is kept text (CSV injection)
  const safe = v => typeof v === "string" && /^[=+\-@\t\r]/.test(v) ? "'" + v : String(v);
  const quote = v => /[",\n\r]/.test(safe(v)) ? `"${safe(v).replaceAll('"', '""')}"` : safe(v);
  const text = [["file", "status", "label", "confidence", "seconds", "id"], ...rows].map(r => r.map(quote).join(",")).join("\r\n");
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text + "\r\n"], { type: "text/csv" }));
  a.download = "iraas-results.csv";
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

function show(el, r) {
  el.querySelector(".status").textContent = r.status + (r.timings && r.timings.total ? ` · ${r.timings.total.toFixed(2)} s` : "");
  if (r.status === "done") {
    el.dataset.label = r.label;
    el.querySelector(".label").textContent = `${r.label} (${(r.confidence * 100).toFixed(1)} %)`;
    el.querySelector("ol").innerHTML = "";
    for (const t of r.top5 || []) {
      const li = document.createElement("li");
      li.textContent = `${t.label} — ${(t.probability * 100).toFixed(1)} %`;
      el.querySelector("ol").append(li);
    }
  } else if (r.status === "failed" || r.error) {
    el.classList.add("failed");
    el.querySelector(".label").textContent = "failed: " + (r.reason || r.detail || r.error);
  }
}

async function poll(el, id) {
  for (;;) {
    const r = await (await api(`/v1/recognitions/${id}`)).json();
    show(el, r);
    if (r.status === "done" || r.status === "failed" || r.error) { remember(r); return; }
    await new Promise(ok => setTimeout(ok, 300));
  }
}

async function upload(file) {
  const el = card(file);
  const form = new FormData();
  form.append("files", file);
  try {
    const resp = await api("/v1/recognitions?wait=false", { method: "POST", body: form });
    const body = await resp.json();
    if (!resp.ok) { show(el, body); remember({ ...body, name: file.name, status: "failed" }); return; }
    await poll(el, body[0].id);
  } catch (e) {
    show(el, { status: "failed", error: String(e) });
  }
}

async function cluster() {
  if ($("app").hidden) return;
  try {
    const c = await (await api("/v1/cluster")).json();
    const states = {};
    for (const w of c.workers) states[w.state] = (states[w.state] || 0) + 1;
    const ws = Object.entries(states).map(([s, n]) => `${n} ${s}`).join(", ") || "none";
    $("cluster").textContent = `queue: ${c.queue.visible} waiting, ${c.queue.in_flight} in flight · workers: ${ws}`;
    chart(c.history || []);
    decisions(c.decisions);
  } catch (e) { $("cluster").textContent = "cluster view unavailable"; }
}

// history: [at, waiting, in flight, workers], one every 2 s for the last 10 minutes
function chart(history) {
  if (!history.length) return;
  const t1 = history[history.length - 1][0], t0 = Math.min(history[0][0], t1 - 60);
  const top = Math.max(1, ...history.map(h => Math.max(h[1] + h[2], h[3])));
  const x = t => ((t - t0) / Math.max(t1 - t0, 1) * 600).toFixed(1);
  const y = v => (136 - v / top * 128).toFixed(1);
  const line = pick => history.map(h => `${x(h[0])},${y(pick(h))}`).join(" ");
  document.querySelector('#chart [data-series="waiting"]').setAttribute("points", line(h => h[1] + h[2]));
  document.querySelector('#chart [data-series="workers"]').setAttribute("points", line(h => h[3]));
  $("scale").textContent = `· top: ${top} · ${Math.round((t1 - t0) / 60)} min`;
}

function decisions(list) {
  const ol = $("decisions");
  ol.innerHTML = "";
  if (!list) { ol.textContent = "Shown to admin keys."; return; }
  for (const d of list.slice(-10).reverse()) {
    const li = document.createElement("li");
    const at = new Date(d.at * 1000).toLocaleTimeString();
    li.textContent = `${at} ${d.workers} → ${d.desired}` + (d.rule ? ` [${d.rule}]` : "") + `: ${d.reason}`;
    ol.append(li);
  }
}

function signedOut(message) {
  sessionStorage.removeItem(KEY);
  $("app").hidden = true;
  $("who").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("cluster").textContent = "signed out";
}

function signedIn(me) {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("who").hidden = me.auth === "off";
  $("whoname").textContent = `${me.name} (${me.scope})`;
  cluster();
}

// Who are we? 200: go (with the stored key, or none needed); 401: ask for a key.
async function start() {
  const resp = await fetch("/v1/me", { headers: authHeaders() });
  if (resp.ok) { signedIn(await resp.json()); return; }
  signedOut(sessionStorage.getItem(KEY) ? "Your key was refused: it is wrong, or it was revoked." : "");
}

$("signin").addEventListener("submit", async e => {
  e.preventDefault();
  const key = $("key").value.trim();
  const resp = await fetch("/v1/me", { headers: { Authorization: `Bearer ${key}` } });
  if (!resp.ok) { $("signin-error").textContent = "That key was refused."; return; }
  sessionStorage.setItem(KEY, key);
  $("key").value = "";
  signedIn(await resp.json());
});
$("signout").addEventListener("click", () => signedOut(""));
$("csv").addEventListener("click", csv);

const drop = $("drop");
function handle(files) { for (const f of files) upload(f); }
$("files").addEventListener("change", e => handle(e.target.files));
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over"); handle(e.dataTransfer.files); });

start();
setInterval(cluster, 1000);
