// The rlhb operator dashboard: polls the admin routes every POLL_MS and draws what they say.
// The admin token is asked once, kept in sessionStorage (this tab only) and sent as a bearer
// header, never in a URL. No request goes out before there is a token: a 401 would be logged
// by the browser as a console error. Text from the server goes in through textContent only.
"use strict";

const POLL_MS = 2500;
const TOKEN_KEY = "rlhb-admin-token";
const CURVES = [
  ["reward", "reward"],
  ["kl", "KL to reference"],
  ["d_acc", "D held-out accuracy"],
  ["clipfrac", "clip fraction"],
];
const $ = (id) => document.getElementById(id);
let timer = null;
let chosenRound = null; // null: follow the newest round
let knownRounds = [];

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(method, path) {
  const res = await fetch(path, { method, headers: { Authorization: "Bearer " + token() } });
  const body = await res.json().catch(() => ({}));
  if (res.status === 401 || res.status === 403) { signOut(body.detail || "wrong admin token"); throw new Error("auth"); }
  if (!res.ok) throw new Error(body.detail || res.status + " " + res.statusText);
  return body;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function when(ts) { return ts ? new Date(ts * 1000).toLocaleString() : ""; }
function secs(s) { return s === null || s === undefined ? "" : Number(s).toFixed(1) + " s"; }
function pct(x) { return x === null || x === undefined ? "n/a" : (100 * x).toFixed(1) + "%"; }

// ------------------------------------------------------------------ sign in / out
function signIn(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
  $("token-form").hidden = true;
  $("main").hidden = false;
  $("sign-out").hidden = false;
  refresh();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (timer) clearTimeout(timer);
  timer = null;
  $("token-form").hidden = false;
  $("main").hidden = true;
  $("sign-out").hidden = true;
  $("token-error").textContent = message || "";
  $("updated").textContent = "not signed in";
}

// ------------------------------------------------------------------ polling
// Each call supersedes the ones still in flight (a click refreshes at once): only the newest
// draws and schedules the next poll, so there is never more than one polling loop.
let generation = 0;
async function refresh() {
  const mine = ++generation;
  if (timer) clearTimeout(timer);
  timer = null;
  if (!token()) return;
  try {
    const [status, versions] = await Promise.all([api("GET", "/admin/status"), api("GET", "/admin/versions")]);
    if (mine !== generation) return;
    drawStatus(status);
    drawVersions(versions);
    drawRounds(status);
    await drawCurves(mine);
    if (mine !== generation) return;
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    if (e.message === "auth" || mine !== generation) return;
    $("updated").textContent = "update failed: " + e.message;
  }
  if (token()) timer = setTimeout(refresh, POLL_MS);
}

function drawStatus(s) {
  $("active-version").textContent = s.active;
  $("trial").textContent = s.trial ? "A/B trial: " + s.trial.candidate + " on " + pct(s.trial.share) : "";
  const a = s.api;
  const model = a.backend === null ? " (admin-only instance, no model)" : a.model_ready ? "" : " (model loading)";
  $("proc-api").textContent = "up, serving " + a.serving + model +
    ", outbox " + a.outbox_pending + (a.last_error ? "; last error: " + a.last_error : "");
  for (const name of ["aggregator", "trainer"]) {
    const cell = $("proc-" + name);
    cell.textContent = s[name].summary;
    cell.className = s[name].state === "up" ? "good" : "bad";
  }
}

function ciBar(live) {
  const bar = el("span", null, "ci");
  const span = el("span");
  span.style.left = (100 * live.ci_low) + "%";
  span.style.width = (100 * (live.ci_high - live.ci_low)) + "%";
  bar.appendChild(span);
  if (live.like_rate !== null) {
    const mark = el("i");
    mark.style.left = (100 * Math.min(1, live.like_rate)) + "%";
    bar.appendChild(mark);
  }
  return bar;
}

function drawVersions(v) {
  $("active-version").textContent = v.active;
  $("live-source").textContent = "counts: " + v.live_counts_from;
  $("btn-rollback").disabled = !v.rollback_target;
  $("btn-rollback").title = v.rollback_target ? "make " + v.rollback_target + " active again" : "nothing to roll back to";
  const body = $("versions").querySelector("tbody");
  body.replaceChildren();
  for (const row of v.versions) {
    const tr = el("tr", null, row.active ? "active-row" : "");
    tr.dataset.version = row.name;
    const name = el("td", row.name + (row.active ? " (active)" : ""));
    name.appendChild(el("div", row.algorithm ? row.algorithm + ", " + row.status : row.status, "lineage"));
    tr.appendChild(name);
    tr.appendChild(el("td", row.lineage.slice(1).join(" \u2190 ") || "\u2014", "lineage"));
    const g = row.gate;
    tr.appendChild(el("td", g ? g.outcome + (g.reason ? ": " + g.reason : "") : row.reason || "\u2014"));
    const rate = el("td");
    rate.appendChild(ciBar(row.live));
    rate.appendChild(el("span", pct(row.live.like_rate) + " [" + pct(row.live.ci_low) + ", " + pct(row.live.ci_high) + "]"));
    tr.appendChild(rate);
    tr.appendChild(el("td", row.live.views));
    const act = el("td");
    if (!row.active && row.status === "published") {
      const b = el("button", "Promote");
      b.type = "button";
      b.className = "promote";
      b.addEventListener("click", () => act_("POST", "/admin/promote/" + encodeURIComponent(row.name), b));
      act.appendChild(b);
    }
    tr.appendChild(act);
    body.appendChild(tr);
  }
}

function drawRounds(s) {
  const body = $("rounds").querySelector("tbody");
  body.replaceChildren();
  const t = s.trainer.members.find((m) => !m.stale);
  if (t && t.phase && t.phase !== "idle") {
    const tr = el("tr", null, "active-row");
    for (const text of [t.round, when(t.round_started_at), t.round_reason, "", s.trainer.summary, "", ""]) {
      tr.appendChild(el("td", text));
    }
    body.appendChild(tr);
  }
  for (const r of s.rounds) {
    const tr = el("tr", null, "clickable");
    tr.addEventListener("click", () => { chosenRound = r.round; refresh(); });
    const outcome = (r.outcome || "") + (r.reason ? ": " + r.reason : "");
    for (const text of [r.round, when(r.started_at), r.reason_for_round, r.records, outcome, secs(r.seconds), r.version]) {
      tr.appendChild(el("td", text));
    }
    body.appendChild(tr);
  }
  const rounds = s.rounds.map((r) => r.round);
  if (t && t.round && t.phase !== "idle" && !rounds.includes(t.round)) rounds.unshift(t.round);
  if (rounds.join() !== knownRounds.join()) {
    knownRounds = rounds;
    const sel = $("curve-round");
    sel.replaceChildren(el("option", "newest round"));
    sel.firstChild.value = "";
    for (const n of rounds) { const o = el("option", "round " + n); o.value = String(n); sel.appendChild(o); }
    sel.value = chosenRound === null ? "" : String(chosenRound);
  }
}

async function drawCurves(mine) {
  const round = chosenRound === null ? knownRounds[0] : chosenRound;
  const box = $("curves");
  if (!round) { box.replaceChildren(el("p", "no rounds yet", "muted")); return; }
  const idx = knownRounds.indexOf(round);
  const before = idx >= 0 ? knownRounds[idx + 1] : undefined;
  const [now, past] = await Promise.all([
    api("GET", "/admin/rounds/" + round + "/curve"),
    before ? api("GET", "/admin/rounds/" + before + "/curve") : Promise.resolve({ points: [] }),
  ]);
  if (mine !== generation) return;
  box.replaceChildren();
  for (const [key, label] of CURVES) {
    const fig = el("figure");
    fig.appendChild(plot(key, [[past.points, "#b8bec9"], [now.points, "#1d5fa8"]]));
    const last = now.points.length ? now.points[now.points.length - 1][key] : null;
    fig.appendChild(el("figcaption", label + " \u2014 round " + round +
      (last === null || last === undefined ? "" : ", last " + Number(last).toPrecision(3))));
    box.appendChild(fig);
  }
}

// A line chart in inline SVG: y scaled to the values shown, x to the iterations.
function plot(key, series) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 300, H = 140, P = 24;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  const values = series.flatMap(([pts]) => pts.map((p) => p[key]).filter((v) => typeof v === "number"));
  if (!values.length) {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", P); t.setAttribute("y", H / 2); t.textContent = "no data";
    svg.appendChild(t);
    return svg;
  }
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const n = Math.max(2, ...series.map(([pts]) => pts.length));
  for (const [v, y] of [[hi, P / 2 + 4], [lo, H - 4]]) {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", 2); t.setAttribute("y", y); t.setAttribute("font-size", "10"); t.setAttribute("fill", "#667");
    t.textContent = Number(v).toPrecision(3);
    svg.appendChild(t);
  }
  for (const [pts, colour] of series) {
    const coords = [];
    pts.forEach((p, i) => {
      if (typeof p[key] !== "number") return;
      const x = P + (W - P - 4) * i / (n - 1);
      const y = H - 8 - (H - P) * (p[key] - lo) / (hi - lo);
      coords.push(x.toFixed(1) + "," + y.toFixed(1));
    });
    if (!coords.length) continue;
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", coords.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", colour);
    line.setAttribute("stroke-width", "2");
    svg.appendChild(line);
  }
  return svg;
}

// ------------------------------------------------------------------ actions
async function act_(method, path, button) {
  const msg = $("action-msg");
  if (button) button.disabled = true;
  msg.className = "";
  msg.textContent = "\u2026";
  try {
    const r = await api(method, path);
    msg.className = "good";
    msg.textContent = r.active !== undefined ? "active: " + r.active + " (was " + r.previous + ")"
      : "training request queued (position " + r.position + ")";
  } catch (e) {
    if (e.message === "auth") return;
    msg.className = "bad";
    msg.textContent = e.message;
  } finally {
    if (button) button.disabled = false;
  }
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("token").value.trim();
    $("token").value = "";
    if (value) signIn(value);
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("btn-rollback").addEventListener("click", (ev) => act_("POST", "/admin/rollback", ev.currentTarget));
  $("btn-train").addEventListener("click", (ev) => act_("POST", "/admin/train", ev.currentTarget));
  $("curve-round").addEventListener("change", (ev) => {
    chosenRound = ev.target.value === "" ? null : Number(ev.target.value);
    refresh();
  });
  if (token()) signIn(token());
});
