/**
 * The inline-completion pipeline end to end: a fake completion source (the user's generator,
 * played by a local HTTP server) → the REAL endorm daemon → candidates best first.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { EndormClient } from "../client";
import { rankCandidates, suggest } from "../rank";
import { startDaemon, type Daemon } from "../testing/daemon";
import { startSourceFixture } from "../testing/sourceFixture";

let daemon: Daemon;
let client: EndormClient;

before(async () => {
  daemon = await startDaemon();
  client = new EndormClient({ socketPath: daemon.socketPath, timeoutMs: 120_000 });
});

after(async () => {
  await daemon?.stop();
});

const BEFORE = "Geography quiz.\nQ: The capital of France is";

test("OpenAI source: n candidates, reranked by endorm with the text before the cursor", async () => {
  const src = await startSourceFixture("/v1/completions", () => ({
    body: {
      object: "text_completion",
      choices: [
        { index: 0, text: " banana", finish_reason: "stop" },
        { index: 1, text: " Paris", finish_reason: "stop" },
        { index: 2, text: " banana", finish_reason: "stop" },
        { index: 3, text: "", finish_reason: "stop" },
      ],
    },
  }));
  try {
    const ranked = await suggest(client, BEFORE, "\nQ: ...", {
      source: { endpoint: src.url, kind: "openai", n: 4, maxTokens: 8, temperature: 0.8 },
      contextChars: 30,
      timeoutMs: 120_000,
    });
    assert.deepEqual(ranked.map((r) => r.text), [" Paris", " banana"]); // empty and duplicate dropped
    assert.ok(ranked[0].score > ranked[1].score);
    assert.deepEqual(ranked.map((r) => r.rank), [1, 2]);
    const sent = src.requests[0] as Record<string, unknown>;
    assert.equal(sent.prompt, BEFORE.slice(-30));
    assert.equal(sent.n, 4);
    assert.equal(sent.max_tokens, 8);
  } finally {
    await src.close();
  }
});

test("llama-server infill source: n_cmpl candidates with prefix and suffix, reranked", async () => {
  const src = await startSourceFixture("/infill", () => ({
    body: [
      { index: 0, content: " London", stop: true },
      { index: 1, content: " Paris", stop: true },
      { index: 2, content: " banana", stop: true },
    ],
  }));
  try {
    const ranked = await suggest(client, BEFORE, ".\nQ: And of Italy?", {
      source: { endpoint: src.url, kind: "llama-server-infill", n: 3, maxTokens: 8, temperature: 0.8 },
      contextChars: 2000,
      timeoutMs: 120_000,
    });
    assert.equal(ranked.length, 3);
    assert.equal(ranked[0].text, " Paris");
    assert.equal(ranked[2].text, " banana");
    const sent = src.requests[0] as Record<string, unknown>;
    assert.equal(sent.input_prefix, BEFORE);
    assert.equal(sent.input_suffix, ".\nQ: And of Italy?");
    assert.equal(sent.n_cmpl, 3);
  } finally {
    await src.close();
  }
});

test("rankCandidates agrees with a direct score request, and accepts an empty context", async () => {
  const cands = [" sat on the mat.", " purple the of.", " jumped over it."];
  const ranked = await rankCandidates(client, "The cat", cands);
  const direct = await client.score({ format: "raw", prompt: "The cat", candidates: cands, aggregate: "endo_mean" });
  assert.deepEqual(ranked.map((r) => r.text), direct.order.map((i) => cands[i]));
  const atStart = await rankCandidates(client, "", ["def main():", "):( niam fed"]);
  assert.equal(atStart.length, 2);
  assert.deepEqual(await rankCandidates(client, "x", ["", ""]), []);
});
