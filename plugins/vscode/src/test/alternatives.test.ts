import { test } from "node:test";
import * as assert from "node:assert/strict";
import { joinAlternatives, splitAlternatives } from "../alternatives";

test("one alternative per non-blank line when there is no blank line inside", () => {
  const a = splitAlternatives("x = 1\n  y = 2\r\nz = 3\n");
  assert.deepEqual(a.items, ["x = 1", "  y = 2", "z = 3"]);
  assert.equal(a.mode, "lines");
  assert.equal(a.lead, "");
  assert.equal(a.trail, "\n");
});

test("blocks between blank lines when the selection has a blank line inside", () => {
  const a = splitAlternatives("\nfor x in xs:\n    f(x)\n\n  \nlist(map(f, xs))\n\n");
  assert.equal(a.mode, "blocks");
  assert.deepEqual(a.items, ["for x in xs:\n    f(x)", "list(map(f, xs))"]);
  assert.equal(a.lead, "\n");
  assert.equal(a.trail, "\n\n");
});

test("blank lines only at the ends do not switch to blocks", () => {
  const a = splitAlternatives("\n\na\nb\n\n");
  assert.equal(a.mode, "lines");
  assert.deepEqual(a.items, ["a", "b"]);
});

test("empty and blank selections give no alternatives", () => {
  assert.deepEqual(splitAlternatives("").items, []);
  assert.deepEqual(splitAlternatives(" \n\t\n").items, []);
});

test("join writes back in the given order with the document's line end", () => {
  assert.equal(joinAlternatives(["b", "a"], "lines"), "b\na");
  assert.equal(joinAlternatives(["p\nq", "r"], "blocks", "\r\n"), "p\r\nq\r\n\r\nr");
  const a = splitAlternatives("one\ntwo\nthree");
  assert.equal(a.lead + joinAlternatives([...a.items].reverse(), a.mode) + a.trail, "three\ntwo\none");
});
