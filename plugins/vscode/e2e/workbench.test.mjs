// The extension in a real VS Code: code-server (VS Code 1.139 served to a browser) with the built
// .vsix installed, shown by headless Chromium (puppeteer-core), against the real endorm daemon on
// the real model. Keys are typed into the workbench as a user would; results are read from the
// editor's DOM and checked against the daemon's own answer to the same request; a screenshot of
// each state goes to <repo>/target/editors/. The completion source is a local fixture (fixed
// candidates); the ranking is the daemon's.
//
// Env: ENDORM_BIN, ENDORM_MODEL (as the unit tests), CHROMIUM (default /usr/bin/chromium).
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";
import { decodePng } from "./png.mjs";
import daemonModule from "../out/testing/daemon.js";
import sourceModule from "../out/testing/sourceFixture.js";
import clientModule from "../out/client.js";

const { startDaemon, freePort } = daemonModule;
const { startSourceFixture } = sourceModule;
const { EndormClient } = clientModule;

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PLUGIN = path.resolve(HERE, "..");
const REPO = path.resolve(PLUGIN, "..", "..");
const SHOTS = path.join(REPO, "target", "editors");
const VERSION = JSON.parse(fs.readFileSync(path.join(PLUGIN, "package.json"), "utf8")).version;
const VSIX = path.join(PLUGIN, `endorm-vscode-${VERSION}.vsix`);
const CODE_SERVER = path.join(HERE, "node_modules", ".bin", "code-server");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SOURCE_CANDIDATES = [" banana", " Paris", " mostly"];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Text as the editor's DOM shows it, with its non-breaking spaces as spaces. */
const plain = (s) => (s ?? "").replace(/\u00a0/g, " ");

let tmp, daemon, source, codeServer, browser, page, client, settingsFile;
const serverLog = [];
const consoleErrors = [];
/** Error notifications a test caused on purpose (the workbench logs them to the console too). */
const expectedErrors = [];

/** Wait until `fn()` is truthy (it may be async); fail with `what` after `ms`. */
async function until(what, fn, ms = 30_000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
    await sleep(100);
  }
}

/** Settings that every state of the test has: a quiet workbench, and an editor that types literally. */
function baseSettings() {
  return {
    "workbench.startupEditor": "none",
    "security.workspace.trust.enabled": false,
    "telemetry.telemetryLevel": "off",
    "chat.disableAIFeatures": true,
    "workbench.secondarySideBar.defaultVisibility": "hidden",
    "extensions.autoCheckUpdates": false,
    "extensions.autoUpdate": false,
    "update.mode": "none",
    "workbench.tips.enabled": false,
    "editor.minimap.enabled": false,
    "editor.hover.delay": 100,
    // Typed JSON stays as typed (the TCP test edits settings.json in the editor).
    "editor.autoClosingBrackets": "never",
    "editor.autoClosingQuotes": "never",
    "editor.autoSurround": "never",
    "editor.autoIndent": "none",
    "editor.quickSuggestions": { "other": "off", "comments": "off", "strings": "off" },
    "editor.suggestOnTriggerCharacters": false,
    "editor.acceptSuggestionOnCommitCharacter": false,
  };
}

/** The user settings before the workbench starts. */
function writeSettings(extra) {
  fs.writeFileSync(settingsFile, JSON.stringify({ ...baseSettings(), ...extra }, null, 2));
}

/**
 * Change the user settings as a user does: "Preferences: Open User Settings (JSON)", type, save,
 * close. (code-server does not notice the file changing under it; its own editor's save it does.)
 */
async function editSettings(extra) {
  const want = { ...baseSettings(), ...extra };
  const label = "Preferences: Open User Settings (JSON)";
  await palette(label, label);
  await page.waitForSelector('.monaco-editor.focused[data-uri$="/User/settings.json"]', { timeout: 10_000 });
  await press("KeyA", "Control");
  await press("Backspace");
  await page.keyboard.sendCharacter(JSON.stringify(want)); // one insertion, as a paste is
  await press("KeyS", "Control");
  await until("settings.json saved", () => fs.readFileSync(settingsFile, "utf8") === JSON.stringify(want), 10_000).catch((e) => {
    throw new Error(`${e.message}; the file holds: ${fs.readFileSync(settingsFile, "utf8")}`);
  });
  await press("KeyW", "Control");
}

/** Run "endorm: Check daemon" until a notification satisfies `ok` (settings apply asynchronously). */
async function checkDaemon(what, ok) {
  return until(what, async () => {
    await palette("endorm: Check daemon", "endorm: Check daemon");
    const deadline = Date.now() + 3_000;
    while (Date.now() < deadline) {
      const found = (await toasts()).find(ok);
      if (found) return found;
      await sleep(100);
    }
    return null;
  }, 60_000);
}

/** A screenshot under target/editors/, checked not to be blank (many colours, no colour on ~all pixels). */
async function shot(name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  const file = path.join(SHOTS, `vscode-${name}.png`);
  const png = await page.screenshot({ path: file });
  const { width, height, distinctColours, dominantShare } = decodePng(Buffer.from(png));
  assert.ok(width >= 800 && height >= 600, `${file}: ${width}x${height}`);
  assert.ok(distinctColours >= 16 && dominantShare < 0.97, `${file} looks blank: ${distinctColours} colours, ${dominantShare}`);
  return file;
}

async function press(key, ...modifiers) {
  for (const m of modifiers) await page.keyboard.down(m);
  await page.keyboard.press(key);
  for (const m of modifiers.reverse()) await page.keyboard.up(m);
}

/** The rows of the open quick input (command palette, QuickPick): label, description. */
function quickPickRows() {
  return page.$$eval(".quick-input-widget .monaco-list-row", (rows) =>
    rows
      .map((r) => ({
        top: r.getBoundingClientRect().top,
        label: r.querySelector(".label-name")?.textContent ?? r.textContent,
        description: r.querySelector(".label-description")?.textContent ?? "",
      }))
      .sort((a, b) => a.top - b.top)
      .map(({ label, description }) => ({ label, description })),
  );
}

/** F1, type `text`, wait for a row labelled exactly `label`, run it. */
async function palette(text, label, command = true) {
  await press("F1");
  const input = await page.waitForSelector(".quick-input-widget input", { visible: true });
  if (!command) await press("Backspace"); // file mode: no ">"
  await input.type(text);
  await until(`"${label}" in the palette`, async () => (await quickPickRows()).some((r) => plain(r.label) === label));
  const rows = await quickPickRows();
  for (let i = 0; i < rows.findIndex((r) => plain(r.label) === label); i++) await press("ArrowDown");
  await press("Enter");
}

/** The lines of the active editor, top to bottom, as shown. */
function editorLines() {
  return page.$$eval(".editor-group-container.active .monaco-editor .view-lines .view-line", (lines) =>
    lines
      .map((l) => ({ top: l.getBoundingClientRect().top, text: l.textContent }))
      .sort((a, b) => a.top - b.top)
      .map((l) => l.text.replace(/\u00a0/g, " ")),
  );
}

/** Open `name` of the workspace through Quick Open and wait for its text. */
async function openFile(name, firstLine) {
  await palette(name, name, false);
  await until(`${name} in the editor`, async () => (await editorLines())[0] === firstLine);
  await page.waitForSelector(".editor-group-container.active .monaco-editor.focused", { timeout: 10_000 });
}

/** Select whole lines `from`..`to` (1-based): from the start of `from` to the start of `to + 1`. */
async function selectLines(from, to) {
  await press("KeyG", "Control");
  await page.waitForSelector(".quick-input-widget input", { visible: true });
  await page.keyboard.type(String(from));
  await press("Enter");
  await press("Home");
  await press("Home"); // the first press may stop at the first non-blank character
  for (let i = from; i <= to; i++) await press("ArrowDown", "Shift");
}

function statusTexts() {
  return page.$$eval(".statusbar-item", (items) => items.map((i) => i.textContent.trim()).filter(Boolean));
}

function toasts() {
  return page.$$eval(".notifications-toasts .notification-list-item-message", (m) => m.map((x) => x.textContent));
}

before(async () => {
  for (const [what, p] of [["the .vsix (npm run package)", VSIX], ["code-server (npm ci in e2e/)", CODE_SERVER], ["Chromium (apt-get install chromium)", CHROMIUM]]) {
    assert.ok(fs.existsSync(p), `missing ${what}: ${p}`);
  }
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "endorm-e2e-"));
  daemon = await startDaemon({ tcp: true });
  client = new EndormClient({ socketPath: daemon.socketPath, timeoutMs: 120_000 });
  source = await startSourceFixture("/v1/completions", () => ({
    body: { object: "text_completion", choices: SOURCE_CANDIDATES.map((text, index) => ({ index, text, finish_reason: "stop" })) },
  }));

  const dirs = ["--user-data-dir", path.join(tmp, "user"), "--extensions-dir", path.join(tmp, "extensions")];
  const config = path.join(tmp, "code-server.yaml");
  fs.writeFileSync(config, "");
  // Its own config and data directories: nothing of the user's is read or written.
  const env = { ...process.env, XDG_CONFIG_HOME: path.join(tmp, "config"), XDG_DATA_HOME: path.join(tmp, "data") };
  execFileSync(CODE_SERVER, [...dirs, "--config", config, "--install-extension", VSIX], { env, stdio: "pipe" });

  const ws = path.join(tmp, "workspace");
  fs.mkdirSync(ws);
  fs.writeFileSync(path.join(ws, "rerank.txt"), "The capital of France is\n banana\n Paris\n the city of light\n");
  fs.writeFileSync(path.join(ws, "lens.txt"), "The Eiffel Tower is in Paris.\nIt was built in 1889 for the World Fair, and it is made of cheese.\n");
  fs.writeFileSync(path.join(ws, "inline.txt"), "Geography quiz.\nQ: The capital of France is");
  fs.mkdirSync(path.join(tmp, "user", "User"), { recursive: true });
  settingsFile = path.join(tmp, "user", "User", "settings.json");
  writeSettings({
    "endorm.socket": daemon.socketPath,
    "endorm.timeoutMs": 120_000,
    "endorm.completion.endpoint": source.url,
    "endorm.completion.n": SOURCE_CANDIDATES.length,
  });

  const port = await freePort();
  codeServer = spawn(
    CODE_SERVER,
    [...dirs, "--config", config, "--bind-addr", `127.0.0.1:${port}`, "--auth", "none", "--disable-telemetry",
      "--disable-update-check", "--disable-workspace-trust", ws],
    { env, stdio: ["ignore", "pipe", "pipe"] },
  );
  codeServer.stdout.on("data", (d) => serverLog.push(String(d)));
  codeServer.stderr.on("data", (d) => serverLog.push(String(d)));
  await until("code-server to listen", () => serverLog.join("").includes("HTTP server listening"), 60_000);

  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: path.join(tmp, "chromium"),
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run"],
  });
  page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(ws)}`);
  await page.waitForSelector(".monaco-workbench", { timeout: 120_000 });
  // The extension's commands are in the palette once its host has registered them.
  await until("the endorm commands", async () => {
    await press("F1");
    const input = await page.waitForSelector(".quick-input-widget input", { visible: true });
    await input.type("endorm: Rerank");
    await sleep(300);
    const found = (await quickPickRows()).some((r) => r.label === "endorm: Rerank selection");
    await press("Escape");
    return found;
  }, 120_000);
});

after(async () => {
  await browser?.close();
  if (codeServer && codeServer.exitCode === null) {
    const gone = new Promise((r) => codeServer.once("exit", r));
    codeServer.kill("SIGTERM"); // only the code-server this test started
    await Promise.race([gone, sleep(10_000)]);
  }
  await source?.close();
  await daemon?.stop();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test("Rerank selection: the QuickPick lists the daemon's order and scores; 'Keep all' reorders in one undo step", async () => {
  await openFile("rerank.txt", "The capital of France is");
  const alternatives = [" banana", " Paris", " the city of light"];
  const direct = await client.score({ format: "raw", prompt: "The capital of France is\n", candidates: alternatives, aggregate: "endo_mean" });
  const best = direct.order.map((i) => alternatives[i]);

  await selectLines(2, 4);
  await palette("endorm: Rerank selection", "endorm: Rerank selection");
  const rows = await until("the ranked alternatives", async () => {
    const r = await quickPickRows();
    return r.length === 4 && r[0].label.includes("Keep all") ? r : null;
  });
  assert.deepEqual(rows.slice(1).map((r) => plain(r.label).trim()), best.map((b) => b.trim()));
  assert.deepEqual(
    rows.slice(1).map((r) => plain(r.description).trim()),
    direct.order.map((i, k) => `#${k + 1}  score ${direct.results[i].score.toFixed(2)}`),
  );
  assert.equal(best[0], " Paris", "the README's example: Paris first with SmolLM2-135M");
  await shot("rerank-quickpick");

  await press("Enter"); // "Keep all, best first"
  await until("the lines reordered", async () => (await editorLines()).slice(1, 4).join("|") === best.join("|"));
  await shot("rerank-applied");
  await press("KeyZ", "Control");
  await until("one undo restores them", async () => (await editorLines()).slice(1, 4).join("|") === alternatives.join("|"));
});

test("Reward lens: every token coloured as its reward says, hover shows the daemon's values, status bar the total", async () => {
  await openFile("lens.txt", "The Eiffel Tower is in Paris.");
  const line = "It was built in 1889 for the World Fair, and it is made of cheese.";
  const direct = await client.score({ format: "raw", prompt: "The Eiffel Tower is in Paris.\n", candidates: [line], return_tokens: true });
  const result = direct.results[0];

  await selectLines(2, 2);
  await press("ArrowLeft", "Shift"); // keep the line, not its line break
  await palette("endorm: Reward lens", "endorm: Reward lens");
  const status = await until("the lens in the status bar", async () =>
    (await statusTexts()).find((t) => t.endsWith(`over ${result.n_tokens} tokens`)),
  );
  assert.equal(status, `${result.score.toFixed(2)} over ${result.n_tokens} tokens`);

  // One coloured overlay per token with text, left to right, in the colour its reward gives: red
  // below zero, green above, grey near zero, stronger as |reward| nears the line's largest
  // (5 steps a side, rounded), as the README says.
  await press("Escape");
  await press("End");
  const overlays = await until("the coloured tokens", async () => {
    const c = await page.$$eval(".editor-group-container.active .view-overlays .cdr", (els) =>
      els
        .map((e) => ({ left: e.getBoundingClientRect().left, top: e.getBoundingClientRect().top, bg: getComputedStyle(e).backgroundColor }))
        .filter((o) => /^rgba\((220, 50, 47|40, 170, 80|128, 128, 128), /.test(o.bg))
        .sort((a, b) => a.top - b.top || a.left - b.left)
        .map((o) => o.bg),
    );
    return c.length > 0 ? c : null;
  });
  const pieces = result.tokens.filter((t) => t.text.length > 0);
  const scale = Math.max(...pieces.map((t) => Math.abs(t.reward)));
  const expected = pieces.map((t) => {
    const step = Math.max(-5, Math.min(5, Math.round((t.reward / scale) * 5)));
    const alpha = 0.1 + 0.45 * (Math.abs(step) / 5);
    return step < 0 ? `220, 50, 47, ${alpha.toFixed(2)}` : step > 0 ? `40, 170, 80, ${alpha.toFixed(2)}` : "128, 128, 128, 0.10";
  });
  const shown = overlays.map((bg) => {
    const [r, g, b, a] = bg.slice(5, -1).split(",").map(Number);
    return `${r}, ${g}, ${b}, ${a.toFixed(2)}`;
  });
  assert.deepEqual(shown, expected);
  assert.ok(shown.some((c) => c.startsWith("220")) && shown.some((c) => c.startsWith("40")), "both signs shown");
  await shot("lens");

  // Hover the token " cheese": the hover shows its reward as the daemon gave it.
  const cheese = result.tokens.find((t) => t.text === " cheese");
  assert.ok(cheese, "SmolLM2 has a token \" cheese\"");
  const box = await page.evaluate(() => {
    const span = [...document.querySelectorAll(".editor-group-container.active .view-line span span")].find((s) =>
      s.textContent.includes("cheese"),
    );
    const r = span.getBoundingClientRect();
    const at = span.textContent.indexOf("cheese");
    const w = r.width / span.textContent.length;
    return { x: r.left + (at + 3) * w, y: r.top + r.height / 2 };
  });
  await page.mouse.move(box.x, box.y);
  const hover = await until("the lens hover", async () => {
    const h = await page.$$eval(".monaco-hover-content", (els) => els.map((e) => e.textContent).join("\n"));
    return h.includes("endorm reward") ? h : null;
  });
  assert.ok(hover.includes(`endorm reward ${cheese.reward.toFixed(3)}`), hover);
  assert.ok(hover.includes(cheese.logprob.toFixed(3)), hover);
  await shot("lens-hover");
  await page.mouse.move(5, 400);
  await palette("endorm: Clear reward lens", "endorm: Clear reward lens");
  await until("the colours gone", async () => (await page.$$(".editor-group-container.active .view-overlays .cdr")).length === 0 ||
    (await page.$$eval(".editor-group-container.active .view-overlays .cdr", (els) => els.every((e) => getComputedStyle(e).backgroundColor === "rgba(0, 0, 0, 0)"))));
});

test("inline completion: the source's candidates, best first as the daemon ranks them; Alt+] the next; Tab accepts", async () => {
  await openFile("inline.txt", "Geography quiz.");
  const before = "Geography quiz.\nQ: The capital of France is";
  const direct = await client.score({ format: "raw", prompt: before, candidates: SOURCE_CANDIDATES, aggregate: "endo_mean" });
  const best = direct.order.map((i) => SOURCE_CANDIDATES[i]);
  const asked = source.requests.length;

  await press("End", "Control");
  await palette("Trigger Inline Suggestion", "Trigger Inline Suggestion");
  const ghost = () =>
    page.$$eval(".editor-group-container.active [class*='ghost-text']", (els) =>
      els.map((e) => e.textContent.replace(/\u00a0/g, " ")).join(""),
    );
  await until(`ghost text "${best[0]}"`, async () => (await ghost()).trim() === best[0].trim(), 60_000);
  assert.ok(source.requests.length > asked, "the completion source was asked");
  const sent = source.requests.at(-1);
  assert.equal(sent.prompt, before);
  assert.equal(sent.n, SOURCE_CANDIDATES.length);
  await shot("inline");

  await press("BracketRight", "Alt");
  await until(`the next suggestion "${best[1]}"`, async () => (await ghost()).trim() === best[1].trim(), 20_000);
  await press("Tab");
  await until("the suggestion accepted", async () => (await editorLines())[1] === "Q: The capital of France is" + best[1]);
  await shot("inline-accepted");
});

test("over TCP with the token file (endorm.url, endorm.tokenFile): Check daemon answers; a wrong token shows the daemon's 401", async () => {
  const models = await client.models();
  const tcp = { "endorm.url": daemon.url, "endorm.tokenFile": daemon.tokenFile, "endorm.timeoutMs": 120_000 };
  await editSettings(tcp);
  const expected = `endorm at ${daemon.url}: ok; models: ${models.map((m) => (m.default ? `${m.id} (default)` : m.id)).join(", ")}`;
  await checkDaemon("the daemon's status over TCP", (t) => t === expected);
  await shot("tcp-check-daemon");

  const wrong = path.join(tmp, "wrong-token");
  fs.writeFileSync(wrong, "0".repeat(48));
  await editSettings({ ...tcp, "endorm.tokenFile": wrong });
  const err = await checkDaemon("the daemon's 401", (t) => t.startsWith("endorm (401"));
  assert.match(err, /^endorm \(401[^)]*\): \S/);
  expectedErrors.push(err);
  await shot("tcp-wrong-token");
});

test("no console errors from the extension, but the 401 it was made to show", () => {
  const ours = consoleErrors.filter((e) => /endorm/i.test(e) && !expectedErrors.includes(e));
  assert.deepEqual(ours, []);
});
