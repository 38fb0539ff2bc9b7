/**
 * "endorm: Reward lens": colours each token of the selection by its per-token reward
 * (`return_tokens`), red for negative, green for positive, stronger with |reward| relative to the
 * largest in the selection; hovering a token shows its reward, log-prob, Q and V. The lens is
 * cleared by "endorm: Clear reward lens", by running the lens again, or by editing the document.
 */
import * as vscode from "vscode";
import { boundContext } from "./context";
import { abortOnCancel, describeError, isCancellation, makeClient, readSettings } from "./config";
import type { ScoreResponse } from "./client";
import { bucketColour, LEVELS, rewardBucket, rewardScale, tokenSpans, type TokenSpan } from "./rewardScale";

/** Owns the decoration types (one per colour step) and which editors are decorated. */
export class RewardLens implements vscode.Disposable {
  private readonly types = new Map<number, vscode.TextEditorDecorationType>();
  private readonly decorated = new Set<vscode.TextEditor>();
  private readonly subscriptions: vscode.Disposable[] = [];

  constructor(private readonly log: (line: string) => void, private readonly status: vscode.StatusBarItem) {
    for (let b = -LEVELS; b <= LEVELS; b++) {
      this.types.set(b, vscode.window.createTextEditorDecorationType({ backgroundColor: bucketColour(b), borderRadius: "2px" }));
    }
    this.subscriptions.push(
      vscode.workspace.onDidChangeTextDocument((e) => {
        if (e.contentChanges.length === 0) return;
        for (const ed of [...this.decorated]) if (ed.document === e.document) this.clear(ed);
      }),
    );
  }

  /** Score the selection (or the cursor's line when nothing is selected) and decorate its tokens. */
  async show(editor: vscode.TextEditor): Promise<void> {
    const document = editor.document;
    let range: vscode.Range = editor.selection;
    if (range.isEmpty) range = document.lineAt(editor.selection.active.line).range;
    const text = document.getText(range);
    if (text.length === 0) {
      void vscode.window.showInformationMessage("endorm: select some text to see its per-token rewards.");
      return;
    }
    const settings = readSettings();
    const context = boundContext(document.getText(new vscode.Range(new vscode.Position(0, 0), range.start)), settings.contextChars);
    let res: ScoreResponse;
    try {
      res = await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Window, title: "endorm: scoring tokens", cancellable: true },
        async (_p, token) => {
          const abort = abortOnCancel(token);
          try {
            return await makeClient(settings).score(
              {
                format: "raw",
                prompt: context,
                candidates: [text],
                return_tokens: true,
                ...(settings.model ? { model: settings.model } : {}),
              },
              { timeoutMs: settings.timeoutMs, signal: abort.signal },
            );
          } finally {
            abort.dispose();
          }
        },
      );
    } catch (e) {
      if (!isCancellation(e)) void vscode.window.showErrorMessage(describeError(e));
      return;
    }
    const result = res.results[0];
    const layout = tokenSpans(text, result.tokens ?? []);
    if (!layout.complete) {
      void vscode.window.showWarningMessage("endorm: the token pieces did not match the text; only the matching start is coloured.");
    }
    this.clear(editor);
    this.decorate(editor, document.offsetAt(range.start), layout.spans);
    const summary = `endorm lens: ${result.n_tokens} tokens, ${res.aggregate} ${result.score.toFixed(2)} (${res.model})`;
    this.log(summary);
    this.status.text = `$(symbol-color) ${result.score.toFixed(2)} over ${result.n_tokens} tokens`;
    this.status.tooltip = `${summary}. Run "endorm: Clear reward lens" to clear.`;
    this.status.command = "endorm.clearRewardLens";
    this.status.show();
  }

  private decorate(editor: vscode.TextEditor, base: number, spans: TokenSpan[]): void {
    const scale = rewardScale(spans);
    const byBucket = new Map<number, vscode.DecorationOptions[]>();
    for (const span of spans) {
      const bucket = rewardBucket(span.reward, scale);
      const range = new vscode.Range(editor.document.positionAt(base + span.start), editor.document.positionAt(base + span.end));
      const list = byBucket.get(bucket) ?? [];
      list.push({ range, hoverMessage: hover(span) });
      byBucket.set(bucket, list);
    }
    for (const [bucket, type] of this.types) editor.setDecorations(type, byBucket.get(bucket) ?? []);
    this.decorated.add(editor);
  }

  /** Remove the lens from `editor`, or from every editor when none is given. */
  clear(editor?: vscode.TextEditor): void {
    const targets = editor ? [editor] : [...this.decorated];
    for (const ed of targets) {
      for (const type of this.types.values()) ed.setDecorations(type, []);
      this.decorated.delete(ed);
    }
    if (this.decorated.size === 0) this.status.hide();
  }

  dispose(): void {
    this.clear();
    for (const t of this.types.values()) t.dispose();
    for (const s of this.subscriptions) s.dispose();
  }
}

function hover(span: TokenSpan): vscode.MarkdownString {
  const md = new vscode.MarkdownString();
  md.appendMarkdown(`**endorm reward ${span.reward.toFixed(3)}**\n\n`);
  md.appendMarkdown("| token | reward | log-prob | Q | V(next) |\n|---|---:|---:|---:|---:|\n");
  for (const t of span.tokens) {
    const piece = JSON.stringify(t.text).replace(/\|/g, "\\|");
    const tick = piece.includes("`") ? "``" : "`";
    md.appendMarkdown(
      `| ${tick} ${piece} ${tick} | ${t.reward.toFixed(3)} | ${t.logprob.toFixed(3)} | ${t.q.toFixed(2)} | ${t.v_next.toFixed(2)} |\n`,
    );
  }
  return md;
}
