/** Inline completions: candidates from the completion source, offered best first by endorm. */
import * as vscode from "vscode";
import { abortOnCancel, describeError, isCancellation, makeClient, readSettings } from "./config";
import { suggest } from "./rank";

/** Wait this long after a keystroke before asking for candidates (a newer keystroke cancels). */
const DEBOUNCE_MS = 250;

/** Where the provider reports what it did. */
export interface InlineReporter {
  log(line: string): void;
  /** An error worth showing unobtrusively (status bar), not as a pop-up on every keystroke. */
  error(message: string): void;
  ok(): void;
}

/**
 * Asks the configured completion source for `endorm.completion.n` candidates, ranks them with
 * endorm (raw format, the text before the cursor as context) and returns them best first; VS Code
 * shows the first and cycles through the rest. Does nothing while `endorm.completion.endpoint` is
 * empty.
 */
export class RerankingInlineProvider implements vscode.InlineCompletionItemProvider {
  constructor(private readonly report: InlineReporter) {}

  async provideInlineCompletionItems(
    document: vscode.TextDocument,
    position: vscode.Position,
    _context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
  ): Promise<vscode.InlineCompletionItem[]> {
    const settings = readSettings();
    if (!settings.source.endpoint) return [];
    await new Promise((r) => setTimeout(r, DEBOUNCE_MS));
    if (token.isCancellationRequested) return [];

    const offset = document.offsetAt(position);
    const start = document.positionAt(Math.max(0, offset - settings.contextChars));
    const end = document.positionAt(offset + settings.contextChars);
    const before = document.getText(new vscode.Range(start, position));
    const after = document.getText(new vscode.Range(position, end));

    const abort = abortOnCancel(token);
    try {
      const ranked = await suggest(makeClient(settings), before, after, {
        source: settings.source,
        contextChars: settings.contextChars,
        timeoutMs: settings.timeoutMs,
        model: settings.model,
        signal: abort.signal,
      });
      this.report.ok();
      this.report.log(
        `inline ${document.fileName}:${position.line + 1}: ` +
          ranked.map((r) => `${r.score.toFixed(2)} ${JSON.stringify(r.text.slice(0, 40))}`).join(" | "),
      );
      return ranked.map((r) => new vscode.InlineCompletionItem(r.text, new vscode.Range(position, position)));
    } catch (e) {
      if (!isCancellation(e) && !token.isCancellationRequested) {
        this.report.error(describeError(e));
      }
      return [];
    } finally {
      abort.dispose();
    }
  }
}
