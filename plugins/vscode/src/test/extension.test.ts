/**
 * activate(), the commands and the inline provider, in plain Node with a minimal fake `vscode`
 * module (testing/fakeVscode.ts) but the REAL endorm daemon. Not a VS Code window.
 */
import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { startDaemon, type Daemon } from "../testing/daemon";
import { startFakeSource } from "../testing/fakeSource";
import { fake, FakeDocument, fakeEditor, installFakeVscode, Position, Selection } from "../testing/fakeVscode";

installFakeVscode();
// eslint-disable-next-line @typescript-eslint/no-require-imports
const extension = require("../extension") as typeof import("../extension");

let daemon: Daemon;
const subscriptions: { dispose(): void }[] = [];

before(async () => {
  daemon = await startDaemon();
  fake.settings.set("endorm.socket", daemon.socketPath);
  fake.settings.set("endorm.timeoutMs", 120_000);
  extension.activate({ subscriptions } as never);
});

after(async () => {
  subscriptions.forEach((s) => s.dispose());
  await daemon?.stop();
});

test("activate registers the provider and the four commands", () => {
  assert.deepEqual([...fake.commands.keys()].sort(), [
    "endorm.checkDaemon",
    "endorm.clearRewardLens",
    "endorm.rerankSelection",
    "endorm.rewardLens",
  ]);
  assert.equal(fake.providers.length, 1);
});

test("Rerank selection: QuickPick best first with scores; 'keep all' reorders in one edit", async () => {
  const doc = new FakeDocument("Quiz.\nThe capital of France is\n banana\n Paris\n");
  const editor = fakeEditor(doc, new Selection(new Position(2, 0), new Position(4, 0)));
  fake.pick = (items) => items[0];
  await fake.commands.get("endorm.rerankSelection")!(editor);
  const items = fake.picked.at(-1)!;
  assert.equal(items.length, 3);
  assert.equal(items[1].label, " Paris");
  assert.match(items[1].description, /^#1 {2}score -?\d+\.\d\d$/);
  assert.equal(doc.text, "Quiz.\nThe capital of France is\n Paris\n banana\n");
});

test("Rerank selection: picking one replaces the selection with it; too few alternatives is refused", async () => {
  const doc = new FakeDocument("The capital of France is\n banana\n Paris");
  const editor = fakeEditor(doc, new Selection(new Position(1, 0), new Position(2, 6)));
  fake.pick = (items) => items.find((i: { label: string }) => i.label === " Paris");
  await fake.commands.get("endorm.rerankSelection")!(editor);
  assert.equal(doc.text, "The capital of France is\n Paris");
  const one = fakeEditor(doc, new Selection(new Position(1, 0), new Position(1, 6)));
  await fake.commands.get("endorm.rerankSelection")!(one);
  assert.match(fake.messages.at(-1)!.text, /two or more alternatives/);
});

test("Reward lens: every token decorated, hover shows the reward; clear removes all", async () => {
  const doc = new FakeDocument("def add(a, b):\n    return a + b\n");
  const editor = fakeEditor(doc, new Selection(new Position(1, 0), new Position(1, 16)));
  await fake.commands.get("endorm.rewardLens")!(editor);
  const all = [...fake.decorations.values()].flat();
  assert.ok(all.length >= 4, `${all.length} decorated tokens`);
  const covered = all
    .sort((a, b) => doc.offsetAt(a.range.start) - doc.offsetAt(b.range.start))
    .map((d) => doc.getText(d.range))
    .join("");
  assert.equal(covered, "    return a + b"); // the tokens tile the selection exactly
  assert.ok(all.every((d) => /endorm reward -?\d+\.\d{3}/.test(d.hoverMessage.value)));
  await fake.commands.get("endorm.clearRewardLens")!();
  assert.equal([...fake.decorations.values()].flat().length, 0);
});

test("a daemon error is shown with the daemon's message", async () => {
  fake.settings.set("endorm.model", "no-such-model");
  try {
    const doc = new FakeDocument("x = 1\n");
    await fake.commands.get("endorm.rewardLens")!(fakeEditor(doc, new Selection(new Position(0, 0), new Position(0, 5))));
    const last = fake.messages.at(-1)!;
    assert.equal(last.level, "error");
    assert.match(last.text, /endorm \(404 model_not_found\): model "no-such-model" is not served/);
  } finally {
    fake.settings.delete("endorm.model");
  }
});

test("inline provider: candidates from the source, best first; nothing when no endpoint is set", async () => {
  const provider = fake.providers[0];
  const token = { isCancellationRequested: false, onCancellationRequested: () => ({ dispose() {} }) };
  const doc = new FakeDocument("The capital of France is");
  assert.deepEqual(await provider.provideInlineCompletionItems(doc, new Position(0, 24), {}, token), []);
  const src = await startFakeSource("/v1/completions", () => ({
    body: { choices: [{ index: 0, text: " banana" }, { index: 1, text: " Paris" }] },
  }));
  fake.settings.set("endorm.completion.endpoint", src.url);
  try {
    const items = await provider.provideInlineCompletionItems(doc, new Position(0, 24), {}, token);
    assert.deepEqual(items.map((i: { insertText: string }) => i.insertText), [" Paris", " banana"]);
    const cancelled = { ...token, isCancellationRequested: true };
    assert.deepEqual(await provider.provideInlineCompletionItems(doc, new Position(0, 24), {}, cancelled), []);
  } finally {
    fake.settings.delete("endorm.completion.endpoint");
    await src.close();
  }
});
