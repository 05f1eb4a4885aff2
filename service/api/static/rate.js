// The /rate page: one pending task at a time, scored per answer and compared, sent with the
// rater token from sessionStorage (asked once per tab; never put in a URL). Text from the
// server is set as textContent only, so an answer cannot inject markup.
"use strict";

const TOKEN_KEY = "rlhb-rater-token";
const SCALES = {
  quality: [["bad", "Bad"], ["medium", "Medium"], ["good", "Good"], ["excellent", "Excellent"]],
  satisfaction: [["unsatisfied", "Unsatisfied"], ["partially", "Partially satisfied"], ["satisfied", "Satisfied"]],
};
const GROUPS = ["quality-1", "satisfaction-1", "quality-2", "satisfaction-2", "preference"];

const $ = (id) => document.getElementById(id);
let taskId = null;

function show(section) {
  for (const id of ["login", "task", "done"]) $(id).hidden = id !== section;
}

function status(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

function buildScales() {
  for (const article of document.querySelectorAll(".answer")) {
    const n = article.dataset.answer;
    for (const [scale, levels] of Object.entries(SCALES)) {
      const fieldset = document.createElement("fieldset");
      const legend = document.createElement("legend");
      legend.textContent = scale === "quality" ? "Quality" : "Satisfaction";
      fieldset.append(legend);
      for (const [value, text] of levels) {
        const label = document.createElement("label");
        const input = document.createElement("input");
        Object.assign(input, { type: "radio", name: `${scale}-${n}`, value, id: `${scale}-${n}-${value}` });
        label.append(input, ` ${text}`);
        fieldset.append(label);
      }
      article.append(fieldset);
    }
  }
}

function chosen(name) {
  const input = document.querySelector(`input[name="${name}"]:checked`);
  return input ? input.value : null;
}

async function api(path, options = {}) {
  const headers = { "X-Rater-Token": sessionStorage.getItem(TOKEN_KEY) || "", ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401 || response.status === 403) {
    sessionStorage.removeItem(TOKEN_KEY);
    show("login");
    status(body.detail || "rater token refused", true);
    return null;
  }
  return { response, body };
}

async function loadNext() {
  const answer = await api("/v1/rate/next");
  if (answer === null) return;
  if (!answer.response.ok) {
    status(answer.body.detail || `could not load a task (HTTP ${answer.response.status})`, true);
    return;
  }
  const task = answer.body.task;
  if (task === null) {
    taskId = null;
    show("done");
    return;
  }
  taskId = task.task_id;
  $("rating-form").reset();
  $("submit").disabled = true;
  $("question").textContent = task.question;
  $("answer-1").textContent = task.answer_1;
  $("answer-2").textContent = task.answer_2;
  $("pending").textContent = `${task.pending} left to rate`;
  show("task");
}

async function submitRating(event) {
  event.preventDefault();
  if (taskId === null || GROUPS.some((g) => chosen(g) === null)) return;
  $("submit").disabled = true;
  const body = {
    answer_1: { quality: chosen("quality-1"), satisfaction: chosen("satisfaction-1") },
    answer_2: { quality: chosen("quality-2"), satisfaction: chosen("satisfaction-2") },
    preference: chosen("preference"),
  };
  const answer = await api(`/v1/rate/${taskId}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (answer === null) return;
  // 409: this rater already rated it (another tab); either way move on to the next one.
  if (answer.response.ok || answer.response.status === 409) {
    status(answer.response.ok ? "Saved." : "Already rated; here is the next one.");
    await loadNext();
  } else {
    $("submit").disabled = false;
    status(answer.body.detail || `not saved (HTTP ${answer.response.status})`, true);
  }
}

function start() {
  buildScales();
  $("rating-form").addEventListener("change", () => {
    $("submit").disabled = GROUPS.some((g) => chosen(g) === null);
  });
  $("rating-form").addEventListener("submit", submitRating);
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    status("");
    loadNext();
  });
  if (sessionStorage.getItem(TOKEN_KEY)) loadNext();
  else show("login");
}

start();
