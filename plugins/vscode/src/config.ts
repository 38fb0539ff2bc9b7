/** The extension's settings (`endorm.*`) and small glue between VS Code and the client. */
import * as vscode from "vscode";
import { EndormClient, EndormError, readToken } from "./client";
import { CompletionSourceError, type CompletionKind, type CompletionSourceConfig } from "./completionSource";

/** Everything the commands and the provider read from `endorm.*`. */
export interface Settings {
  /** Unix socket; empty: the daemon's default. */
  socket: string;
  /** Base URL of the daemon's TCP listener; set: TCP with the token instead of the socket. */
  url: string;
  /** The TCP token's file; empty: `$ENDORM_TOKEN`, else the daemon's default token file. */
  tokenFile: string;
  /** endorm model id; empty: the daemon's default. */
  model: string;
  contextChars: number;
  timeoutMs: number;
  source: CompletionSourceConfig;
}

/** Read the current settings (read afresh on every use, so changes apply at once). */
export function readSettings(): Settings {
  const c = vscode.workspace.getConfiguration("endorm");
  return {
    socket: c.get<string>("socket", "").trim(),
    url: c.get<string>("url", "").trim(),
    tokenFile: c.get<string>("tokenFile", "").trim(),
    model: c.get<string>("model", "").trim(),
    contextChars: Math.max(1, c.get<number>("contextChars", 2000)),
    timeoutMs: Math.max(100, c.get<number>("timeoutMs", 10000)),
    source: {
      endpoint: c.get<string>("completion.endpoint", "").trim(),
      kind: c.get<CompletionKind>("completion.kind", "openai"),
      n: Math.max(1, c.get<number>("completion.n", 4)),
      maxTokens: Math.max(1, c.get<number>("completion.maxTokens", 48)),
      temperature: c.get<number>("completion.temperature", 0.8),
      model: c.get<string>("completion.model", "").trim(),
    },
  };
}

/** A client for the configured socket (or TCP URL and token) and deadline. */
export function makeClient(s: Settings): EndormClient {
  if (s.url) return new EndormClient({ url: s.url, token: () => readToken(s.tokenFile), timeoutMs: s.timeoutMs });
  return new EndormClient({ socketPath: s.socket || undefined, timeoutMs: s.timeoutMs });
}

/** An AbortSignal that fires when `token` is cancelled; dispose it when the work is done. */
export function abortOnCancel(token: vscode.CancellationToken): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  if (token.isCancellationRequested) controller.abort();
  const sub = token.onCancellationRequested(() => controller.abort());
  return { signal: controller.signal, dispose: () => sub.dispose() };
}

/** True for errors that only say the user (or VS Code) cancelled. */
export function isCancellation(e: unknown): boolean {
  return (
    (e instanceof EndormError && e.code === "cancelled") ||
    (e instanceof Error && e.name === "AbortError") ||
    e instanceof vscode.CancellationError
  );
}

/** The message to show for an error: the daemon's own message, prefixed with where it came from. */
export function describeError(e: unknown): string {
  if (e instanceof EndormError) {
    return e.status ? `endorm (${e.status}${e.code ? " " + e.code : ""}): ${e.message}` : `endorm: ${e.message}`;
  }
  if (e instanceof CompletionSourceError) return `completion source: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}
