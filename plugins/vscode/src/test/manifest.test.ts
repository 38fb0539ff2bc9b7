/**
 * package.json and the code agree: every contributed command is registered, every setting the
 * code reads is contributed with the same default, and the engine matches the typings.
 * (The extension in a real VS Code: e2e/workbench.test.mjs.)
 */
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";

const ROOT = path.resolve(__dirname, "..", "..");
const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8"));
const js = (name: string) => fs.readFileSync(path.join(ROOT, "out", name), "utf8");

test("every contributed command is registered in extension.ts, and only those", () => {
  const contributed = (pkg.contributes.commands as { command: string }[]).map((c) => c.command).sort();
  const registered = [...js("extension.js").matchAll(/register(?:TextEditor)?Command\("([^"]+)"/g)].map((m) => m[1]).sort();
  assert.deepEqual(registered, contributed);
});

test("every setting read in config.ts is contributed with the same default", () => {
  const props = pkg.contributes.configuration.properties as Record<string, { default: unknown }>;
  const reads = [...js("config.js").matchAll(/c\.get\("([^"]+)",\s*([^)]+)\)/g)];
  assert.ok(reads.length >= 10, `found ${reads.length} reads`);
  for (const [, key, dflt] of reads) {
    const prop = props[`endorm.${key}`];
    assert.ok(prop, `endorm.${key} is not contributed`);
    assert.deepEqual(prop.default, JSON.parse(dflt), `default of endorm.${key}`);
  }
  const read = new Set(reads.map((m) => `endorm.${m[1]}`));
  for (const key of Object.keys(props)) assert.ok(read.has(key), `${key} is contributed but never read`);
});

test("engines.vscode matches the pinned @types/vscode", () => {
  assert.equal(pkg.engines.vscode, `^${pkg.devDependencies["@types/vscode"]}`);
  assert.equal(pkg.main, "./out/extension.js");
  assert.ok(fs.existsSync(path.join(ROOT, "out", "extension.js")));
});
