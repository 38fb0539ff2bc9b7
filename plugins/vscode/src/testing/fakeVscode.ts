/**
 * A minimal stand-in for the `vscode` module — only what this extension calls — so tests can run
 * activate(), the commands and the inline provider in plain Node against the real daemon. It is
 * NOT VS Code: rendering, real editors and the extension host are not exercised.
 */
/* eslint-disable @typescript-eslint/no-explicit-any */
import Module = require("node:module");

export class Position {
  constructor(public readonly line: number, public readonly character: number) {}
}

export class Range {
  constructor(public readonly start: Position, public readonly end: Position) {}
  get isEmpty(): boolean {
    return this.start.line === this.end.line && this.start.character === this.end.character;
  }
}

export class Selection extends Range {
  get active(): Position {
    return this.end;
  }
}

/** A text document over a string (`\n` line ends). */
export class FakeDocument {
  version = 1;
  eol = 1; // EndOfLine.LF
  fileName = "/tmp/fake.txt";
  constructor(public text: string) {}
  offsetAt(p: Position): number {
    const lines = this.text.split("\n");
    let off = 0;
    for (let i = 0; i < p.line && i < lines.length; i++) off += lines[i].length + 1;
    return Math.min(this.text.length, off + p.character);
  }
  positionAt(offset: number): Position {
    const o = Math.max(0, Math.min(offset, this.text.length));
    const before = this.text.slice(0, o).split("\n");
    return new Position(before.length - 1, before[before.length - 1].length);
  }
  getText(r?: Range): string {
    return r ? this.text.slice(this.offsetAt(r.start), this.offsetAt(r.end)) : this.text;
  }
  lineAt(line: number) {
    const len = this.text.split("\n")[line].length;
    return { range: new Range(new Position(line, 0), new Position(line, len)) };
  }
}

/** What the fake records, and how tests steer it. */
export const fake = {
  settings: new Map<string, unknown>(),
  commands: new Map<string, (...args: any[]) => any>(),
  providers: [] as any[],
  messages: [] as { level: string; text: string }[],
  decorations: new Map<string, any[]>(),
  /** Which QuickPick item to choose (by index), or undefined to dismiss. */
  pick: (items: any[]): any => items[0],
  picked: [] as any[][],
};

const noop = { dispose() {} };

const api = {
  Position,
  Range,
  Selection,
  EndOfLine: { LF: 1, CRLF: 2 },
  StatusBarAlignment: { Left: 1, Right: 2 },
  ProgressLocation: { SourceControl: 1, Window: 10, Notification: 15 },
  CancellationError: class CancellationError extends Error {},
  MarkdownString: class {
    value = "";
    appendMarkdown(s: string) {
      this.value += s;
      return this;
    }
  },
  InlineCompletionItem: class {
    constructor(public insertText: string, public range: Range) {}
  },
  window: {
    createOutputChannel: () => ({ appendLine() {}, show() {}, dispose() {} }),
    createStatusBarItem: () => ({ text: "", show() {}, hide() {}, dispose() {} }),
    createTextEditorDecorationType: (opts: any) => ({ key: opts.backgroundColor, dispose() {} }),
    withProgress: (_o: any, task: any) =>
      task({ report() {} }, { isCancellationRequested: false, onCancellationRequested: () => noop }),
    showInformationMessage: async (text: string) => void fake.messages.push({ level: "info", text }),
    showWarningMessage: async (text: string) => void fake.messages.push({ level: "warning", text }),
    showErrorMessage: async (text: string) => void fake.messages.push({ level: "error", text }),
    showQuickPick: async (items: any[]) => {
      fake.picked.push(items);
      return fake.pick(items);
    },
  },
  workspace: {
    getConfiguration: (section: string) => ({
      get: (key: string, dflt: unknown) => (fake.settings.has(`${section}.${key}`) ? fake.settings.get(`${section}.${key}`) : dflt),
    }),
    onDidChangeTextDocument: () => noop,
  },
  languages: {
    registerInlineCompletionItemProvider: (_sel: any, p: any) => (fake.providers.push(p), noop),
  },
  commands: {
    registerCommand: (id: string, fn: any) => (fake.commands.set(id, fn), noop),
    registerTextEditorCommand: (id: string, fn: any) => (fake.commands.set(id, fn), noop),
  },
};

/** A fake editor on `doc` with `selection`; `edit` applies replacements to the document text. */
export function fakeEditor(doc: FakeDocument, selection: Selection) {
  const editor = {
    document: doc,
    selection,
    setDecorations(type: { key: string }, ranges: any[]) {
      fake.decorations.set(type.key, ranges);
    },
    async edit(cb: (b: { replace(r: Range, s: string): void }) => void) {
      cb({
        replace(r: Range, s: string) {
          doc.text = doc.text.slice(0, doc.offsetAt(r.start)) + s + doc.text.slice(doc.offsetAt(r.end));
          doc.version++;
        },
      });
      return true;
    },
  };
  return editor;
}

/** Make `require("vscode")` return the fake (call before loading the extension's modules). */
export function installFakeVscode(): void {
  const M = Module as any;
  const original = M._resolveFilename;
  M._resolveFilename = function (request: string, ...rest: unknown[]) {
    if (request === "vscode") return "vscode";
    return original.call(this, request, ...rest);
  };
  M._cache.vscode = { id: "vscode", filename: "vscode", loaded: true, exports: api };
}
