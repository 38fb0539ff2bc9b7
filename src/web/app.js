// The lens's controller: the token from the address's fragment, the form and its state in the
// fragment (a shareable link, never with the token), the calls to /v1/models, /v1/score and
// /openapi.json with the bearer token, the export of what came back.

import { el, renderResults, wireTokens, hideTip } from "/web/lens.js";
import { renderReference } from "/web/reference.js";

const TOKEN_KEY = "endorm.token";
const $ = (id) => document.getElementById(id);

let models = [];
let wantedModels = { model: "", compare: "" };
let last = null;

// --- the token ------------------------------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

/** The fragment's parameters, after moving `token` from the address bar to sessionStorage. */
function takeFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("token")) {
    const given = params.get("token");
    if (given) sessionStorage.setItem(TOKEN_KEY, given);
    params.delete("token");
    setFragment(params);
  }
  return params;
}

function setFragment(params) {
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
}

function needToken(message) {
  $("auth").hidden = false;
  $("score-view").hidden = true;
  $("api-view").hidden = true;
  status(message);
  $("token-input").focus();
}

// --- the daemon -----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const bearer = token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  const text = await response.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // Not JSON: the message is the text.
  }
  if (!response.ok) {
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      needToken(bearer ? "The daemon refused this token (it may have a new one)." : "No token yet.");
    }
    throw new ApiError(response.status, json?.error?.message ?? (text || response.statusText));
  }
  return json;
}

function status(text) {
  $("status").textContent = text;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

async function loadModels() {
  let list;
  try {
    list = await call("GET", "/v1/models");
  } catch (error) {
    if (error.status !== 401) status(`Cannot list the models: ${error.message}`);
    return;
  }
  if (!$("auth").hidden) {
    $("auth").hidden = true;
    showView($("tab-api").getAttribute("aria-pressed") === "true" ? "api" : "score");
  }
  models = list.data ?? [];
  for (const [select, none] of [[$("model"), null], [$("compare"), "(none)"]]) {
    const keep = select.value || (select.id === "model" ? wantedModels.model : wantedModels.compare);
    const options = models.map((m) => el("option", { value: m.id }, `${m.id}${m.default ? " (default)" : ""}${m.state === "ready" ? "" : ` (${m.state})`}`));
    select.replaceChildren(...(none ? [el("option", { value: "" }, none)] : []), ...options);
    const fallback = select.id === "model" ? models.find((m) => m.default)?.id ?? models[0]?.id ?? "" : "";
    select.value = models.some((m) => m.id === keep) ? keep : fallback;
  }
  const loading = models.filter((m) => m.state === "loading").length;
  status(`${models.length} model${models.length === 1 ? "" : "s"}${loading ? `, ${loading} loading` : ""} · connected`);
  if (loading) setTimeout(loadModels, 1000);
}

// --- the form and its state -------------------------------------------------------------------------

function listRow(list, content) {
  const remove = el("button", { type: "button", class: "remove" }, "Remove");
  const item = el("li", {}, content, remove);
  remove.addEventListener("click", () => {
    if (list.children.length > 1) item.remove();
    numberRows(list);
  });
  list.append(item);
  numberRows(list);
  return item;
}

function numberRows(list) {
  [...list.children].forEach((item, i) => {
    const area = item.querySelector("textarea");
    const what = list.id === "candidates" ? "Candidate" : "Message";
    area.setAttribute("aria-label", `${what} ${i + 1}`);
    item.querySelector(".remove").setAttribute("aria-label", `Remove ${what.toLowerCase()} ${i + 1}`);
  });
}

function addCandidate(text = "") {
  const area = el("textarea", { rows: "2", spellcheck: "false" });
  area.value = text;
  listRow($("candidates"), area);
  return area;
}

function addMessage(role = "user", text = "") {
  const select = el("select", { "aria-label": "Role" }, ["system", "user", "assistant"].map((r) => el("option", { value: r }, r)));
  select.value = role;
  const area = el("textarea", { rows: "2", spellcheck: "false" });
  area.value = text;
  listRow($("messages"), [select, area]);
}

function context() {
  return document.querySelector("input[name=context]:checked").value;
}

function showContext() {
  $("prompt-box").hidden = context() !== "prompt";
  $("messages-box").hidden = context() !== "messages";
}

function collectState() {
  return {
    context: context(),
    prompt: $("prompt").value,
    messages: [...$("messages").children].map((li) => ({ role: li.querySelector("select").value, content: li.querySelector("textarea").value })),
    candidates: [...$("candidates").children].map((li) => li.querySelector("textarea").value),
    model: $("model").value,
    compare: $("compare").value,
    format: $("format").value,
    aggregate: $("aggregate").value,
    alpha: $("alpha").value.trim(),
    principle: $("principle").value,
    consensus: $("consensus").value.trim(),
    contrast: $("contrast").checked,
  };
}

/** The state as fragment parameters, defaults left out. */
function stateParams(state) {
  const params = new URLSearchParams();
  if (state.context === "messages") params.set("messages", JSON.stringify(state.messages));
  else params.set("prompt", state.prompt);
  for (const c of state.candidates) params.append("c", c);
  for (const key of ["model", "compare", "format", "alpha", "principle", "consensus"]) {
    if (state[key]) params.set(key, state[key]);
  }
  if (state.aggregate !== "endo") params.set("aggregate", state.aggregate);
  if (state.contrast) params.set("contrast", "neutral");
  return params;
}

function restoreState(params) {
  let messages = null;
  try {
    messages = params.has("messages") ? JSON.parse(params.get("messages")) : null;
  } catch {
    showError("The link's messages are not valid JSON; they were left out.");
  }
  const candidates = params.getAll("c");
  if (Array.isArray(messages) && messages.length) {
    document.querySelector("input[name=context][value=messages]").checked = true;
    for (const m of messages) addMessage(String(m?.role ?? "user"), String(m?.content ?? ""));
  } else {
    addMessage();
  }
  $("prompt").value = params.get("prompt") ?? "What is the capital of France?";
  const texts = candidates.length ? candidates : params.has("prompt") ? [""] : ["Paris.", "London."];
  for (const text of texts) addCandidate(text);
  for (const key of ["format", "aggregate", "alpha", "principle", "consensus"]) {
    if (params.has(key)) $(key).value = params.get(key);
  }
  if (!$("aggregate").value) $("aggregate").value = "endo";
  $("contrast").checked = params.get("contrast") === "neutral";
  wantedModels = { model: params.get("model") ?? "", compare: params.get("compare") ?? "" };
  showContext();
}

function number(text, name) {
  if (text === "") return undefined;
  const value = Number(text);
  if (!Number.isFinite(value)) throw new Error(`${name} is not a number: ${JSON.stringify(text)}`);
  return value;
}

function buildRequest(state, model) {
  const request = { model: model || undefined, candidates: state.candidates, return_tokens: true };
  if (state.context === "messages") request.messages = state.messages;
  else request.prompt = state.prompt;
  if (state.format) request.format = state.format;
  request.aggregate = state.aggregate;
  request.alpha = number(state.alpha, "alpha");
  if (state.principle) request.principle = state.principle;
  request.consensus = number(state.consensus, "consensus");
  if (state.contrast) request.contrast = "neutral";
  return JSON.parse(JSON.stringify(request));
}

// --- actions ------------------------------------------------------------------------------------------

async function score(event) {
  event.preventDefault();
  showError("");
  const state = collectState();
  const names = state.compare && state.compare !== state.model ? [state.model, state.compare] : [state.model];
  let requests;
  try {
    requests = names.map((name) => buildRequest(state, name));
  } catch (error) {
    showError(error.message);
    return;
  }
  setFragment(stateParams(state));
  $("score").disabled = true;
  $("busy").textContent = "Scoring…";
  try {
    const responses = await Promise.all(requests.map((r) => call("POST", "/v1/score", r)));
    last = requests.map((request, i) => ({ model: responses[i].model, request, response: responses[i] }));
    renderResults($("results"), last);
    $("export").disabled = false;
    const ms = responses.map((r) => `${r.model} ${r.timings?.total_ms?.toFixed(0) ?? "?"} ms`).join(", ");
    $("busy").textContent = `Scored: ${ms}.`;
  } catch (error) {
    $("busy").textContent = "";
    if (error.status !== 401) showError(`The daemon answered ${error.status ?? "nothing"}: ${error.message}`);
  } finally {
    $("score").disabled = false;
  }
}

function exportJson() {
  if (!last) return;
  const blob = new Blob([`${JSON.stringify({ runs: last }, null, 2)}\n`], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: "endorm-score.json" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function copyLink() {
  setFragment(stateParams(collectState()));
  try {
    await navigator.clipboard.writeText(location.href);
    $("busy").textContent = "Link copied (without the token).";
  } catch {
    $("busy").textContent = "The address bar holds the link (without the token).";
  }
}

let referenceLoaded = false;

async function showView(name) {
  hideTip();
  $("tab-score").setAttribute("aria-pressed", String(name === "score"));
  $("tab-api").setAttribute("aria-pressed", String(name === "api"));
  if (!$("auth").hidden) return;
  $("score-view").hidden = name !== "score";
  $("api-view").hidden = name !== "api";
  if (name === "api" && !referenceLoaded) {
    try {
      renderReference($("api-view"), await call("GET", "/openapi.json"));
      referenceLoaded = true;
    } catch (error) {
      if (error.status !== 401) $("api-view").replaceChildren(el("p", { role: "alert" }, `Cannot read /openapi.json: ${error.message}`));
    }
  }
}

function start() {
  const params = takeFragment();
  restoreState(params);
  wireTokens($("results"));
  $("input").addEventListener("submit", score);
  $("add-candidate").addEventListener("click", () => addCandidate().focus());
  $("add-message").addEventListener("click", () => addMessage());
  for (const radio of document.querySelectorAll("input[name=context]")) radio.addEventListener("change", showContext);
  $("export").addEventListener("click", exportJson);
  $("copy-link").addEventListener("click", copyLink);
  $("tab-score").addEventListener("click", () => showView("score"));
  $("tab-api").addEventListener("click", () => showView("api"));
  // A link with a token opened in this tab while the page is already here.
  window.addEventListener("hashchange", () => {
    if (new URLSearchParams(location.hash.slice(1)).has("token")) {
      takeFragment();
      loadModels();
    }
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const given = $("token-input").value.trim();
    $("token-input").value = "";
    if (!given) return;
    sessionStorage.setItem(TOKEN_KEY, given);
    status("Trying the token…");
    loadModels();
  });
  loadModels();
}

start();
