/**
 * Ranking candidates with endorm, and the inline-completion pipeline (completion source, then
 * endorm, best first) without any `vscode` import, so it is tested as is against the real daemon.
 */
import type { EndormClient, RequestOptions } from "./client";
import { boundContext, boundSuffix, EMPTY_CONTEXT } from "./context";
import { fetchCompletions, type CompletionSourceConfig } from "./completionSource";

/** A candidate with its endorm score; `rank` 1 is the best. */
export interface RankedCandidate {
  text: string;
  score: number;
  rank: number;
}

/** Options of a ranking call. */
export interface RankOptions extends RequestOptions {
  /** endorm model id; empty or absent: the daemon's default. */
  model?: string;
}

/**
 * Score `candidates` as raw continuations of `context` in one `/v1/score` request and return them
 * best first. Empty and duplicate candidates are dropped first; an empty context is replaced by a
 * newline (raw scoring needs one token of context).
 */
export async function rankCandidates(
  client: EndormClient,
  context: string,
  candidates: string[],
  options: RankOptions = {},
): Promise<RankedCandidate[]> {
  const unique = [...new Set(candidates.filter((c) => c.length > 0))];
  if (unique.length === 0) return [];
  const res = await client.score(
    {
      format: "raw",
      prompt: context.length > 0 ? context : EMPTY_CONTEXT,
      candidates: unique,
      // The per-token mean ranks code completions better than the sum for every model measured
      // (docs/QUALITY.md, "How to choose"): a sum favours the shortest continuation.
      aggregate: "endo_mean",
      ...(options.model ? { model: options.model } : {}),
    },
    { timeoutMs: options.timeoutMs, signal: options.signal },
  );
  return res.order.map((i) => ({ text: unique[i], score: res.results[i].score, rank: res.results[i].rank }));
}

/** Settings of one inline suggestion. */
export interface SuggestOptions extends RankOptions {
  source: CompletionSourceConfig;
  /** Characters of context before (and, for infill, after) the cursor. */
  contextChars: number;
  /** Deadline of each of the two requests. */
  timeoutMs: number;
}

/**
 * What the inline completion provider does at the cursor: ask the completion source for
 * candidates given the text before (and after) the cursor, rank them with endorm against the text
 * before the cursor, best first.
 */
export async function suggest(
  client: EndormClient,
  before: string,
  after: string,
  options: SuggestOptions,
): Promise<RankedCandidate[]> {
  const prefix = boundContext(before, options.contextChars);
  const suffix = boundSuffix(after, options.contextChars);
  const candidates = await fetchCompletions(
    options.source,
    { prefix, suffix },
    { timeoutMs: options.timeoutMs, signal: options.signal },
  );
  return rankCandidates(client, prefix, candidates, options);
}
