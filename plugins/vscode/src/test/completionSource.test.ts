import { test } from "node:test";
import * as assert from "node:assert/strict";
import {
  buildRequestBody,
  CompletionSourceError,
  fetchCompletions,
  parseCompletions,
  type CompletionSourceConfig,
} from "../completionSource";
import { startSourceFixture } from "../testing/sourceFixture";

// Literal samples of what the two kinds of endpoint answer.
const OPENAI_SAMPLE = `{
  "id": "cmpl-7", "object": "text_completion", "created": 1732600000, "model": "qwen2.5-coder",
  "choices": [
    {"text": " b\\n", "index": 1, "logprobs": null, "finish_reason": "stop"},
    {"text": " a + 1", "index": 0, "logprobs": null, "finish_reason": "length"},
    {"text": "", "index": 2, "logprobs": null, "finish_reason": "stop"}
  ],
  "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
}`;
const INFILL_MULTI_SAMPLE = `[
  {"index": 1, "content": "return y", "tokens": [], "id_slot": 0, "stop": true, "model": "qwen", "stop_type": "eos",
   "tokens_predicted": 3, "tokens_evaluated": 40, "truncated": false},
  {"index": 0, "content": "return x", "tokens": [], "id_slot": 1, "stop": true, "model": "qwen", "stop_type": "eos",
   "tokens_predicted": 3, "tokens_evaluated": 40, "truncated": false}
]`;
const INFILL_SINGLE_SAMPLE = `{"index": 0, "content": "pass", "tokens": [], "id_slot": 0, "stop": true,
  "model": "qwen", "stop_type": "limit", "stopping_word": "", "tokens_cached": 0, "truncated": false}`;

const openai: CompletionSourceConfig = { endpoint: "", kind: "openai", n: 3, maxTokens: 16, temperature: 0.7, model: "m" };
const infill: CompletionSourceConfig = { ...openai, kind: "llama-server-infill", model: "" };

test("OpenAI answers: choices[].text in index order", () => {
  assert.deepEqual(parseCompletions("openai", JSON.parse(OPENAI_SAMPLE)), [" a + 1", " b\n", ""]);
});

test("llama-server infill answers: an array (n_cmpl > 1) or one object", () => {
  assert.deepEqual(parseCompletions("llama-server-infill", JSON.parse(INFILL_MULTI_SAMPLE)), ["return x", "return y"]);
  assert.deepEqual(parseCompletions("llama-server-infill", JSON.parse(INFILL_SINGLE_SAMPLE)), ["pass"]);
});

test("answers of the wrong shape are refused", () => {
  assert.throws(() => parseCompletions("openai", JSON.parse(INFILL_SINGLE_SAMPLE)), CompletionSourceError);
  assert.throws(() => parseCompletions("llama-server-infill", JSON.parse(OPENAI_SAMPLE)), CompletionSourceError);
  assert.throws(() => parseCompletions("openai", null), CompletionSourceError);
});

test("request bodies: n / n_cmpl, token limits, prefix and suffix", () => {
  assert.deepEqual(buildRequestBody(openai, { prefix: "def f(", suffix: "):" }), {
    prompt: "def f(",
    n: 3,
    max_tokens: 16,
    temperature: 0.7,
    stream: false,
    model: "m",
  });
  assert.deepEqual(buildRequestBody(infill, { prefix: "def f(", suffix: "):" }), {
    input_prefix: "def f(",
    input_suffix: "):",
    n_predict: 16,
    n_cmpl: 3,
    temperature: 0.7,
    stream: false,
    cache_prompt: true,
  });
});

test("fetchCompletions posts the body and parses the answer", async () => {
  const src = await startSourceFixture("/v1/completions", () => ({ body: JSON.parse(OPENAI_SAMPLE) }));
  try {
    const out = await fetchCompletions({ ...openai, endpoint: src.url }, { prefix: "x =", suffix: "" }, { timeoutMs: 5000 });
    assert.deepEqual(out, [" a + 1", " b\n", ""]);
    assert.deepEqual((src.requests[0] as { prompt: string }).prompt, "x =");
  } finally {
    await src.close();
  }
});

test("fetchCompletions reports the source's own error message and status", async () => {
  const src = await startSourceFixture("/infill", () => ({
    status: 501,
    body: { error: { code: 501, message: "This server does not support infill.", type: "not_supported_error" } },
  }));
  try {
    await assert.rejects(
      fetchCompletions({ ...infill, endpoint: src.url }, { prefix: "a", suffix: "b" }, { timeoutMs: 5000 }),
      (e: unknown) => e instanceof CompletionSourceError && e.status === 501 && /does not support infill/.test(e.message),
    );
  } finally {
    await src.close();
  }
});

test("fetchCompletions: deadline, cancellation, unreachable endpoint", async () => {
  const src = await startSourceFixture("/v1/completions", () => ({ body: JSON.parse(OPENAI_SAMPLE), delayMs: 2000 }));
  try {
    const cfg = { ...openai, endpoint: src.url };
    await assert.rejects(
      fetchCompletions(cfg, { prefix: "a", suffix: "" }, { timeoutMs: 100 }),
      (e: unknown) => e instanceof CompletionSourceError && /within 100 ms/.test(e.message),
    );
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    await assert.rejects(
      fetchCompletions(cfg, { prefix: "a", suffix: "" }, { timeoutMs: 5000, signal: ac.signal }),
      (e: unknown) => e instanceof Error && e.name === "AbortError",
    );
  } finally {
    await src.close();
  }
  await assert.rejects(
    fetchCompletions({ ...openai, endpoint: src.url }, { prefix: "a", suffix: "" }, { timeoutMs: 5000 }),
    (e: unknown) => e instanceof CompletionSourceError && e.status === 0 && /cannot reach/.test(e.message),
  );
});
