// The results of /v1/score as the lens shows them: a ranking table per model, and each candidate's
// tokens coloured by their reward on one diverging scale, with a tooltip (on hover and on keyboard
// focus) holding the daemon's own numbers. With two models, a third row per candidate holds the
// per-token difference. Every text from the model or the user enters the page as a text node.

// The diverging scale: ColorBrewer's PuOr ends around a light grey, readable with the common colour
// vision deficiencies. Negative values go to orange, positive to purple, linearly in sRGB (what the
// legend's CSS gradient draws too), and values beyond ±bound take the end colour.
export const NEGATIVE = [179, 88, 6];
export const MIDDLE = [247, 247, 247];
export const POSITIVE = [84, 39, 136];

/** The colour of `value` on a scale clipped at ±`bound`, as [r, g, b]. */
export function colour(value, bound) {
  const t = Math.max(-1, Math.min(1, value / bound));
  const end = t < 0 ? NEGATIVE : POSITIVE;
  const s = Math.abs(t);
  return MIDDLE.map((m, i) => Math.round(m + (end[i] - m) * s));
}

/** Where the scale is clipped: the 95th percentile of |value| (1 when every value is 0), so one
 * outlier does not wash out every other token. */
export function scaleBound(values) {
  const sorted = values.map(Math.abs).filter(Number.isFinite).sort((a, b) => a - b);
  if (!sorted.length) return 1;
  const bound = sorted[Math.min(sorted.length - 1, Math.ceil(0.95 * sorted.length) - 1)];
  return bound > 0 ? bound : sorted[sorted.length - 1] || 1;
}

/** An element with attributes (constant names, values set as attribute text) and children
 * (strings become text nodes). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

/** A number for a table cell: three decimals; the exact value is in the cell's title. */
function cell(value) {
  if (typeof value !== "number") return el("td", { class: "num" }, "–");
  return el("td", { class: "num", title: String(value) }, value.toFixed(3));
}

/** A token's text as shown: a newline as ↵ before the line break, a tab as →. */
export function shown(text) {
  return text.replace(/\n/g, "↵\n").replace(/\t/g, "→\t");
}

const TERMS = ["agreement", "neutral", "reviewer", "reference"];
const COLUMNS = ["score", "endo", "endo_mean", "logprob", "logprob_mean", "endo_lc"];

function rankingTable(run) {
  const { request, response } = run;
  const terms = TERMS.filter((t) => response.results.some((r) => typeof r[t] === "number"));
  const head = el("tr", {},
    el("th", { scope: "col" }, "Rank"),
    el("th", { scope: "col" }, "Candidate"),
    COLUMNS.map((c) => el("th", { scope: "col", class: c === response.aggregate ? "num chosen" : "num" }, c)),
    terms.map((t) => el("th", { scope: "col", class: "num" }, t)),
    el("th", { scope: "col", class: "num" }, "tokens"),
  );
  const rows = response.order.map((index) => {
    const result = response.results[index];
    const winner = result.rank === 1;
    return el("tr", { class: winner ? "winner" : null, "data-index": index },
      el("td", { class: "rank" }, String(result.rank), winner ? el("span", { class: "badge" }, "★ best") : null),
      el("td", { class: "text" }, el("span", { class: "which" }, `#${index + 1} `), request.candidates[index]),
      COLUMNS.map((c) => cell(result[c])),
      terms.map((t) => cell(result[t])),
      el("td", { class: "num" }, String(result.n_tokens)),
    );
  });
  return el("table", { class: "ranking", "data-model": response.model },
    el("caption", {}, `${response.model} · ranked by score (aggregate ${response.aggregate})`),
    el("thead", {}, head),
    el("tbody", {}, rows),
  );
}

function legend(label, bound, kind) {
  return el("div", { class: "legend", "data-kind": kind, "data-bound": String(bound) },
    el("span", { class: "what" }, label),
    el("span", { class: "lo" }, `≤ −${bound.toPrecision(3)}`),
    el("span", { class: "bar", "aria-hidden": "true" }),
    el("span", { class: "hi" }, `≥ +${bound.toPrecision(3)}`),
    el("span", { class: "mid" }, "orange: below 0 · grey: 0 · purple: above 0"),
  );
}

// The tooltip's rows for each token span.
const details = new WeakMap();

function tokenSpan(text, value, bound, rows) {
  const display = shown(text);
  const span = el("span", { class: "tok", tabindex: "-1", "data-value": String(value) }, display || null);
  const rgb = colour(value, bound);
  // CSSOM, which the Content-Security-Policy allows (style attributes it does not).
  span.style.backgroundColor = `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
  const light = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2] > 140;
  span.classList.toggle("dark", !light);
  details.set(span, { text, rows });
  return span;
}

function strip(label, spans) {
  if (spans.length) spans[0].tabIndex = 0;
  return el("div", { class: "strip-row" },
    el("span", { class: "strip-label" }, label),
    el("div", { class: "strip", role: "group", "aria-label": label }, spans));
}

function tokenRows(token) {
  return [["token id", token.id], ["logprob", token.logprob], ["q", token.q], ["v_next", token.v_next], ["reward", token.reward]];
}

function sameTokens(a, b) {
  return a.length === b.length && a.every((t, i) => t.id === b[i].id);
}

/** Renders `runs` ([{request, response}], one per model, same input) into `root`. */
export function renderResults(root, runs) {
  hideTip();
  root.replaceChildren();
  const tokensOf = (run, i) => run.response.results[i].tokens ?? [];
  const rewards = runs.flatMap((run) => run.response.results.flatMap((r) => (r.tokens ?? []).map((t) => t.reward)));
  const bound = scaleBound(rewards);
  const pair = runs.length === 2;
  const diffs = [];
  if (pair) {
    runs[0].response.results.forEach((_, i) => {
      const [a, b] = [tokensOf(runs[0], i), tokensOf(runs[1], i)];
      diffs[i] = sameTokens(a, b) ? a.map((t, k) => b[k].reward - t.reward) : null;
    });
  }
  const diffBound = scaleBound(diffs.flatMap((d) => d ?? []));

  root.append(el("div", { class: pair ? "rankings pair" : "rankings" }, runs.map((run) => el("div", { class: "scroll" }, rankingTable(run)))));
  root.append(el("div", { class: "legends" },
    legend("reward per token", bound, "reward"),
    pair ? legend(`difference ${runs[1].response.model} − ${runs[0].response.model}`, diffBound, "difference") : null,
  ));

  const candidates = runs[0].request.candidates;
  candidates.forEach((text, i) => {
    const article = el("article", { class: "candidate", "data-index": i });
    const heads = runs.map((run) => {
      const result = run.response.results[i];
      return el("span", { class: result.rank === 1 ? "head winner" : "head" },
        pair ? `${run.response.model}: ` : "",
        `rank ${result.rank}, score ${result.score.toFixed(3)}`,
        result.rank === 1 ? el("span", { class: "badge" }, "★ best") : null);
    });
    article.append(el("h3", {}, `Candidate #${i + 1} `, heads));
    runs.forEach((run) => {
      const spans = tokensOf(run, i).map((t) => tokenSpan(t.text, t.reward, bound, tokenRows(t)));
      article.append(strip(pair ? run.response.model : "reward", spans));
    });
    if (pair) {
      const [a, b] = [tokensOf(runs[0], i), tokensOf(runs[1], i)];
      const [na, nb] = [runs[0].response.model, runs[1].response.model];
      if (diffs[i]) {
        const spans = a.map((t, k) => tokenSpan(t.text, diffs[i][k], diffBound, [
          ["token id", t.id], [`reward (${na})`, t.reward], [`reward (${nb})`, b[k].reward], ["difference", diffs[i][k]],
        ]));
        article.append(strip(`${nb} − ${na}`, spans));
      } else {
        article.append(el("p", { class: "note" }, `${na} and ${nb} tokenize this candidate differently: no per-token difference.`));
      }
    }
    if (!runs.some((run) => tokensOf(run, i).length)) {
      article.append(el("p", { class: "note" }, `No tokens scored (candidate text: ${JSON.stringify(text)}).`));
    }
    root.append(article);
  });
}

// The tooltip: one element, filled with the hovered or focused token's numbers.
let shownFor = null;

function tip() {
  return document.getElementById("tip");
}

export function hideTip() {
  const box = tip();
  if (box) box.hidden = true;
  if (shownFor) shownFor.removeAttribute("aria-describedby");
  shownFor = null;
}

function showTip(span) {
  const info = details.get(span);
  const box = tip();
  if (!info || !box) return;
  if (shownFor && shownFor !== span) shownFor.removeAttribute("aria-describedby");
  box.replaceChildren(
    el("p", { class: "tip-text" }, JSON.stringify(info.text)),
    el("dl", {}, info.rows.map(([name, value]) => [el("dt", {}, name), el("dd", {}, String(value))])),
  );
  box.hidden = false;
  span.setAttribute("aria-describedby", "tip");
  shownFor = span;
  place();
}

/** Puts the tooltip under its token, or above it where the window ends. Fixed, in the window's
 * coordinates: the tooltip never changes the document's size (nor moves what is under the mouse). */
function place() {
  const box = tip();
  if (!shownFor || !box) return;
  const rect = shownFor.getBoundingClientRect();
  const view = document.documentElement;
  const left = Math.max(4, Math.min(rect.left, view.clientWidth - box.offsetWidth - 4));
  const below = rect.bottom + 6;
  const top = below + box.offsetHeight > view.clientHeight ? rect.top - box.offsetHeight - 6 : below;
  box.style.left = `${left}px`;
  box.style.top = `${Math.max(4, top)}px`;
}

function tokenOf(target) {
  return target instanceof Element ? target.closest(".tok") : null;
}

/** Hover and keyboard handling for every strip under `root` (call once). */
export function wireTokens(root) {
  window.addEventListener("scroll", place, { passive: true });
  window.addEventListener("resize", place);
  root.addEventListener("mouseover", (event) => {
    const span = tokenOf(event.target);
    if (span) showTip(span);
  });
  root.addEventListener("mouseout", (event) => {
    const span = tokenOf(event.target);
    if (span && span === shownFor && !span.contains(event.relatedTarget) && document.activeElement !== span) hideTip();
  });
  root.addEventListener("focusin", (event) => {
    const span = tokenOf(event.target);
    if (!span) return;
    // A roving tab stop: the strip keeps one, on the token focused last.
    for (const other of span.parentElement.querySelectorAll(".tok")) other.tabIndex = other === span ? 0 : -1;
    showTip(span);
  });
  root.addEventListener("focusout", (event) => {
    if (tokenOf(event.target) === shownFor) hideTip();
  });
  root.addEventListener("keydown", (event) => {
    const span = tokenOf(event.target);
    if (!span) return;
    const all = [...span.parentElement.querySelectorAll(".tok")];
    const at = all.indexOf(span);
    const to = { ArrowRight: at + 1, ArrowDown: at + 1, ArrowLeft: at - 1, ArrowUp: at - 1, Home: 0, End: all.length - 1 }[event.key];
    if (event.key === "Escape") {
      hideTip();
    } else if (to !== undefined && all[to]) {
      event.preventDefault();
      all[to].focus();
    }
  });
}
