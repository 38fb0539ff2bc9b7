import { test } from "node:test";
import * as assert from "node:assert/strict";
import type { TokenDetail } from "../client";
import { bucketColour, LEVELS, rewardBucket, rewardScale, tokenSpans } from "../rewardScale";

const tok = (text: string, reward: number): TokenDetail => ({ id: 0, text, reward, logprob: -1, q: 0, v_next: 0 });

test("token pieces are laid over the text", () => {
  const layout = tokenSpans("def f():", [tok("def", 1), tok(" f", -2), tok("():", 0.5)]);
  assert.ok(layout.complete);
  assert.deepEqual(
    layout.spans.map((s) => [s.start, s.end, s.reward]),
    [[0, 3, 1], [3, 5, -2], [5, 8, 0.5]],
  );
});

test("empty pieces (a character split over tokens) join the next piece and add their reward", () => {
  // What the daemon sends for " 日本": " ", "", "日", "本"
  const layout = tokenSpans(" 日本", [tok(" ", 1), tok("", -3), tok("日", -1), tok("本", 2)]);
  assert.ok(layout.complete);
  assert.deepEqual(layout.spans.map((s) => [s.start, s.end, s.reward, s.tokens.length]), [
    [0, 1, 1, 1],
    [1, 2, -4, 2],
    [2, 3, 2, 1],
  ]);
});

test("a mismatch stops the layout and says it is incomplete", () => {
  const layout = tokenSpans("hello world", [tok("hello", 0), tok(" there", 0)]);
  assert.equal(layout.complete, false);
  assert.equal(layout.spans.length, 1);
  assert.equal(tokenSpans("abc", [tok("ab", 0)]).complete, false);
});

test("reward buckets: sign, magnitude relative to the scale, clamped", () => {
  assert.equal(rewardBucket(0, 10), 0);
  assert.equal(rewardBucket(10, 10), LEVELS);
  assert.equal(rewardBucket(-10, 10), -LEVELS);
  assert.equal(rewardBucket(-50, 10), -LEVELS);
  assert.equal(rewardBucket(4, 10), 2);
  assert.equal(rewardBucket(NaN, 10), 0);
  assert.equal(rewardBucket(3, 0), 0);
});

test("colours: red below zero, green above, stronger further out", () => {
  assert.match(bucketColour(-1), /^rgba\(220, 50, 47, /);
  assert.match(bucketColour(2), /^rgba\(40, 170, 80, /);
  const alpha = (c: string) => Number(/([\d.]+)\)$/.exec(c)![1]);
  assert.ok(alpha(bucketColour(-LEVELS)) > alpha(bucketColour(-1)));
  assert.ok(alpha(bucketColour(LEVELS)) > alpha(bucketColour(1)));
  assert.notEqual(bucketColour(0), bucketColour(1));
});

test("the scale is the largest |reward|", () => {
  const spans = tokenSpans("ab", [tok("a", -7), tok("b", 3)]).spans;
  assert.equal(rewardScale(spans), 7);
  assert.equal(rewardScale([]), 1);
});
