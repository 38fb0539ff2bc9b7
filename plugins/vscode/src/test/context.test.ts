import { test } from "node:test";
import * as assert from "node:assert/strict";
import { boundContext, boundSuffix, EMPTY_CONTEXT } from "../context";

test("boundContext keeps the last maxChars characters", () => {
  assert.equal(boundContext("abcdef", 3), "def");
  assert.equal(boundContext("abc", 10), "abc");
});

test("boundContext never returns an empty prompt", () => {
  assert.equal(boundContext("", 100), EMPTY_CONTEXT);
});

test("bounds do not cut a surrogate pair in half", () => {
  const s = "a\u{1F389}b"; // a, party popper (2 UTF-16 units), b
  assert.equal(boundContext(s, 2), "b"); // the low surrogate alone is dropped
  assert.equal(boundContext(s, 3), "\u{1F389}b");
  assert.equal(boundSuffix(s, 2), "a"); // the high surrogate alone is dropped
  assert.equal(boundSuffix(s, 3), "a\u{1F389}");
  assert.equal(boundSuffix("", 5), "");
});
