/** client.ts against the real endorm daemon on the real model (started here, see testing/daemon.ts). */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { defaultSocket, defaultTokenFile, EndormClient, EndormError, errorFromBody, readToken } from "../client";
import { startDaemon, type Daemon } from "../testing/daemon";

let daemon: Daemon;
let client: EndormClient;

before(async () => {
  daemon = await startDaemon({ tcp: true });
  client = new EndormClient({ socketPath: daemon.socketPath, timeoutMs: 120_000 });
});

after(async () => {
  await daemon?.stop();
});

test("health is ok and the model is listed with its metadata", async () => {
  const health = await client.health();
  assert.equal(health.status, "ok");
  assert.ok(health.models.length >= 1);
  const models = await client.models();
  assert.ok(models.length >= 1);
  const m = models.find((x) => x.default) ?? models[0];
  assert.equal(m.object, "model");
  assert.ok(m.meta && m.meta.n_vocab > 0 && m.meta.n_ctx_train > 0);
  assert.equal(m.meta.file, path.basename(process.env.ENDORM_MODEL || "SmolLM2-135M-Instruct.Q4_1.gguf"));
});

test('score (raw): " Paris" beats " banana" after "The capital of France is"', async () => {
  const r = await client.score({ format: "raw", prompt: "The capital of France is", candidates: [" banana", " Paris"] });
  assert.equal(r.aggregate, "endo");
  assert.ok(r.model);
  assert.deepEqual(r.results.map((x) => x.index), [0, 1]);
  assert.deepEqual(r.order, [1, 0]);
  assert.equal(r.results[1].rank, 1);
  assert.ok(r.results[1].score > r.results[0].score);
  assert.equal(r.results[0].tokens, undefined);
});

test("return_tokens: the pieces concatenate to the candidate, one entry per token", async () => {
  const candidates = ["  x = 1\n\tdef f():\n    return 1", " héllo wörld 日本語 🎉"];
  const r = await client.score({ format: "raw", prompt: "a", candidates, return_tokens: true });
  r.results.forEach((res, i) => {
    const toks = res.tokens;
    assert.ok(toks && toks.length === res.n_tokens);
    assert.equal(toks.map((t) => t.text).join(""), candidates[i]);
    for (const t of toks) {
      for (const k of ["id", "logprob", "q", "v_next", "reward"] as const) assert.equal(typeof t[k], "number");
    }
    const sum = toks.reduce((s, t) => s + t.reward, 0);
    assert.ok(Math.abs(sum - res.endo) < 1e-6 * Math.max(1, Math.abs(res.endo)), `sum of rewards ${sum} = endo ${res.endo}`);
  });
});

test("a bad request rejects with the daemon's own message, status and code", async () => {
  await assert.rejects(
    client.score({ format: "raw", prompt: "x", candidates: [] }),
    (e: unknown) =>
      e instanceof EndormError &&
      e.status === 400 &&
      e.code === "invalid_request" &&
      e.message.includes("`candidates` is empty"),
  );
  await assert.rejects(
    client.score({ format: "raw", prompt: "x", candidates: ["y"], model: "no-such-model" }),
    (e: unknown) => e instanceof EndormError && e.status === 404 && /no-such-model/.test(e.message),
  );
  await assert.rejects(
    client.request("GET", "/no/such/route"),
    (e: unknown) => e instanceof EndormError && e.status === 404 && /no route/.test(e.message),
  );
});

test("no daemon at the socket: status 0, code no_daemon, says where it looked", async () => {
  const missing = path.join(daemon.dir, "missing.sock");
  const c = new EndormClient({ socketPath: missing, timeoutMs: 2_000 });
  await assert.rejects(c.health(), (e: unknown) => {
    return e instanceof EndormError && e.status === 0 && e.code === "no_daemon" && e.message.includes(missing);
  });
});

test("a socket that never answers: the deadline rejects with code timeout", async () => {
  const sock = path.join(daemon.dir, "silent.sock");
  const held: net.Socket[] = [];
  const server = net.createServer((s) => held.push(s)); // accepts, never answers
  await new Promise<void>((r) => server.listen(sock, r));
  try {
    const c = new EndormClient({ socketPath: sock, timeoutMs: 200 });
    const t0 = Date.now();
    await assert.rejects(c.health(), (e: unknown) => e instanceof EndormError && e.code === "timeout");
    const waited = Date.now() - t0;
    assert.ok(waited >= 190 && waited < 5_000, `waited ${waited} ms`);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    await assert.rejects(
      c.health({ timeoutMs: 10_000, signal: ac.signal }),
      (e: unknown) => e instanceof EndormError && e.code === "cancelled",
    );
  } finally {
    held.forEach((s) => s.destroy());
    await new Promise<void>((r) => server.close(() => r()));
    fs.rmSync(sock, { force: true });
  }
});

test("over TCP with the token: the same scores as over the socket", async () => {
  const tcp = new EndormClient({ url: daemon.url!, token: () => readToken(daemon.tokenFile!), timeoutMs: 120_000 });
  assert.equal(tcp.where, daemon.url);
  assert.equal((await tcp.health()).status, "ok");
  const body = { format: "raw" as const, prompt: "The capital of France is", candidates: [" banana", " Paris"] };
  const [viaTcp, viaSocket] = [await tcp.score(body), await client.score(body)];
  assert.deepEqual(viaTcp.order, viaSocket.order);
  assert.deepEqual(viaTcp.results.map((r) => r.score), viaSocket.results.map((r) => r.score));
});

test("over TCP: a wrong or missing token is the daemon's 401, an unreadable token file says where it looked", async () => {
  for (const token of ["0".repeat(48), undefined]) {
    const c = new EndormClient({ url: daemon.url!, token, timeoutMs: 10_000 });
    await assert.rejects(c.health(), (e: unknown) => e instanceof EndormError && e.status === 401 && e.message.length > 0);
  }
  const missing = path.join(daemon.dir, "no-such-token");
  const c = new EndormClient({ url: daemon.url!, token: () => readToken(missing), timeoutMs: 10_000 });
  await assert.rejects(
    c.health(),
    (e: unknown) => e instanceof EndormError && e.code === "no_token" && e.message.includes(missing) && /endorm\.tokenFile/.test(e.message),
  );
});

test("readToken: the file named, else ENDORM_TOKEN, else the default file; trimmed; empty refused", () => {
  const file = path.join(daemon.dir, "t1");
  fs.writeFileSync(file, "  abc\n");
  assert.equal(readToken(file, { ENDORM_TOKEN: "from-env" }), "abc");
  assert.equal(readToken("", { ENDORM_TOKEN: "from-env\n" }), "from-env");
  fs.writeFileSync(file, "\n");
  assert.throws(() => readToken(file, {}), (e: unknown) => e instanceof EndormError && e.code === "no_token" && /empty/.test(e.message));
  const runtime = fs.mkdtempSync(path.join(daemon.dir, "rt-"));
  fs.mkdirSync(path.join(runtime, "endorm"));
  fs.writeFileSync(path.join(runtime, "endorm", "token"), "xyz");
  assert.equal(readToken("", { XDG_RUNTIME_DIR: runtime }), "xyz");
});

test("a URL that is not http://HOST:PORT is refused before anything is sent", async () => {
  for (const url of ["https://127.0.0.1:1", "127.0.0.1:8765", "unix:/x.sock"]) {
    const c = new EndormClient({ url, token: "t" });
    await assert.rejects(c.health(), (e: unknown) => e instanceof EndormError && e.code === "bad_url" && e.message.includes(url), url);
  }
});

test("defaultSocket follows endorm serve: ENDORM_SOCKET, XDG_RUNTIME_DIR, then the cache dir", () => {
  assert.equal(defaultSocket({ ENDORM_SOCKET: "/s/e.sock" }, "linux", "/h"), "/s/e.sock");
  assert.equal(defaultSocket({ XDG_RUNTIME_DIR: "/run/user/1" }, "linux", "/h"), "/run/user/1/endorm/endorm.sock");
  assert.equal(defaultSocket({}, "linux", "/h"), "/h/.cache/endorm/endorm.sock");
  assert.equal(defaultSocket({ XDG_RUNTIME_DIR: "/run/user/1" }, "darwin", "/h"), "/h/Library/Caches/endorm/endorm.sock");
  assert.equal(defaultTokenFile({ XDG_RUNTIME_DIR: "/run/user/1" }, "linux", "/h"), "/run/user/1/endorm/token");
  assert.equal(defaultTokenFile({}, "linux", "/h"), "/h/.cache/endorm/token");
  assert.equal(defaultTokenFile({ LOCALAPPDATA: "C:\\Users\\u\\AppData\\Local" }, "win32", "C:\\Users\\u"), "C:\\Users\\u\\AppData\\Local\\endorm\\cache\\token");
});

test("errorFromBody keeps a non-JSON body as the message", () => {
  const e = errorFromBody(502, "Bad Gateway\n");
  assert.equal(e.status, 502);
  assert.equal(e.message, "Bad Gateway");
});
