/**
 * Entry point: wires the inline completion provider, the commands and the output channel.
 * Commands: endorm.rerankSelection, endorm.rewardLens, endorm.clearRewardLens, endorm.checkDaemon.
 */
import * as vscode from "vscode";
import { describeError, makeClient, readSettings } from "./config";
import { RerankingInlineProvider } from "./inline";
import { RewardLens } from "./lens";
import { rerankSelection } from "./rerankSelection";

/** Called by VS Code on startup (`onStartupFinished`) or on the first command. */
export function activate(context: vscode.ExtensionContext): void {
  const output = vscode.window.createOutputChannel("endorm");
  const log = (line: string) => output.appendLine(`[${new Date().toISOString()}] ${line}`);

  const inlineStatus = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  inlineStatus.command = "endorm.checkDaemon";
  const lensStatus = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 99);
  const lens = new RewardLens(log, lensStatus);

  const provider = new RerankingInlineProvider({
    log,
    error(message) {
      log(`inline: ${message}`);
      inlineStatus.text = "$(warning) endorm";
      inlineStatus.tooltip = message;
      inlineStatus.show();
    },
    ok() {
      inlineStatus.hide();
    },
  });

  context.subscriptions.push(
    output,
    inlineStatus,
    lensStatus,
    lens,
    vscode.languages.registerInlineCompletionItemProvider({ pattern: "**" }, provider),
    vscode.commands.registerTextEditorCommand("endorm.rerankSelection", (editor) => rerankSelection(editor, log)),
    vscode.commands.registerTextEditorCommand("endorm.rewardLens", (editor) => lens.show(editor)),
    vscode.commands.registerCommand("endorm.clearRewardLens", () => lens.clear()),
    vscode.commands.registerCommand("endorm.checkDaemon", () => checkDaemon(log, output)),
  );
}

/** Nothing to do: everything is disposed through the context's subscriptions. */
export function deactivate(): void {}

async function checkDaemon(log: (line: string) => void, output: vscode.OutputChannel): Promise<void> {
  const settings = readSettings();
  try {
    const client = makeClient(settings);
    const health = await client.health({ timeoutMs: Math.min(settings.timeoutMs, 5000) });
    const models = await client.models({ timeoutMs: Math.min(settings.timeoutMs, 5000) });
    const ids = models.map((m) => (m.default ? `${m.id} (default)` : m.id)).join(", ");
    const line = `endorm at ${client.where}: ${health.status}; models: ${ids}`;
    log(line);
    void vscode.window.showInformationMessage(line);
  } catch (e) {
    log(describeError(e));
    output.show(true);
    void vscode.window.showErrorMessage(describeError(e));
  }
}
