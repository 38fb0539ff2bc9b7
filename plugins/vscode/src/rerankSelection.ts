/**
 * "endorm: Rerank selection": the selection holds alternatives (one per line, or blocks separated
 * by blank lines; see alternatives.ts); endorm scores each as a continuation of the text above the
 * selection, and a QuickPick lists them best first with their scores. Picking one replaces the
 * selection with it; the first entry instead keeps them all, reordered best first. Either is one
 * edit (one undo).
 */
import * as vscode from "vscode";
import { joinAlternatives, splitAlternatives } from "./alternatives";
import { boundContext } from "./context";
import { abortOnCancel, describeError, isCancellation, makeClient, readSettings } from "./config";
import { rankCandidates, type RankedCandidate } from "./rank";

interface Choice extends vscode.QuickPickItem {
  replacement: string;
}

/** Run the command on `editor`; `log` receives one line per result. */
export async function rerankSelection(editor: vscode.TextEditor, log: (line: string) => void): Promise<void> {
  const selection = editor.selection;
  const document = editor.document;
  const { mode, items, lead, trail } = splitAlternatives(document.getText(selection));
  if (items.length < 2) {
    void vscode.window.showInformationMessage(
      "endorm: select two or more alternatives, one per line (or blocks separated by blank lines).",
    );
    return;
  }
  const settings = readSettings();
  const context = boundContext(
    document.getText(new vscode.Range(new vscode.Position(0, 0), selection.start)),
    settings.contextChars,
  );
  const version = document.version;

  let ranked: RankedCandidate[];
  try {
    ranked = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: `endorm: ranking ${items.length} alternatives`, cancellable: true },
      async (_progress, token) => {
        const abort = abortOnCancel(token);
        try {
          return await rankCandidates(makeClient(settings), context, items, {
            model: settings.model,
            timeoutMs: settings.timeoutMs,
            signal: abort.signal,
          });
        } finally {
          abort.dispose();
        }
      },
    );
  } catch (e) {
    if (!isCancellation(e)) void vscode.window.showErrorMessage(describeError(e));
    return;
  }
  log(`rerank selection: ${ranked.map((r) => `${r.score.toFixed(2)} ${JSON.stringify(r.text.slice(0, 40))}`).join(" | ")}`);

  const eol = document.eol === vscode.EndOfLine.CRLF ? "\r\n" : "\n";
  const reordered = joinAlternatives(
    ranked.map((r) => r.text),
    mode,
    eol,
  );
  const choices: Choice[] = [
    {
      label: "$(list-ordered) Keep all, best first",
      description: `${ranked.length} alternatives`,
      replacement: reordered,
    },
    ...ranked.map((r) => ({
      label: firstLine(r.text),
      description: `#${r.rank}  score ${r.score.toFixed(2)}`,
      detail: r.text.includes("\n") ? `${r.text.split("\n").length} lines` : undefined,
      replacement: r.text.split("\n").join(eol),
    })),
  ];
  const picked = await vscode.window.showQuickPick(choices, {
    title: "endorm: alternatives, best first (pick one to replace the selection)",
    matchOnDescription: true,
  });
  if (!picked) return;
  if (document.version !== version) {
    void vscode.window.showWarningMessage("endorm: the document changed while ranking; nothing replaced.");
    return;
  }
  await editor.edit((edit) => edit.replace(selection, lead + picked.replacement + trail));
}

function firstLine(text: string): string {
  const line = text.split("\n")[0];
  return text.includes("\n") ? `${line} …` : line;
}
