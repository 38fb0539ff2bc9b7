/**
 * The pure part of "endorm: Reward lens" (no `vscode` import): placing per-token rewards on the
 * text, and the colour scale.
 */
import type { TokenDetail } from "./client";

/** A stretch of the scored text with the token(s) that produced it. */
export interface TokenSpan {
  /** UTF-16 offsets into the scored text, `end` exclusive. */
  start: number;
  end: number;
  /** The sum of the tokens' rewards. */
  reward: number;
  /**
   * Usually one token; more when a character's UTF-8 bytes were split over several tokens (the
   * daemon then sends empty pieces for all but the last).
   */
  tokens: TokenDetail[];
}

/** Where each token lies in `text`; `complete` is false if the pieces stopped matching the text. */
export interface TokenLayout {
  spans: TokenSpan[];
  complete: boolean;
}

/**
 * Lay the tokens' pieces (`return_tokens`) over `text`, the candidate they were scored as. The
 * pieces concatenate to the candidate; empty pieces join the next non-empty one.
 */
export function tokenSpans(text: string, tokens: TokenDetail[]): TokenLayout {
  const spans: TokenSpan[] = [];
  let pos = 0;
  let pending: TokenDetail[] = [];
  for (const tok of tokens) {
    if (tok.text.length === 0) {
      pending.push(tok);
      continue;
    }
    if (!text.startsWith(tok.text, pos)) {
      return { spans, complete: false };
    }
    const group = [...pending, tok];
    pending = [];
    spans.push({
      start: pos,
      end: pos + tok.text.length,
      reward: group.reduce((s, t) => s + t.reward, 0),
      tokens: group,
    });
    pos += tok.text.length;
  }
  if (pending.length && spans.length) {
    const lastSpan = spans[spans.length - 1];
    lastSpan.tokens.push(...pending);
    lastSpan.reward += pending.reduce((s, t) => s + t.reward, 0);
  }
  return { spans, complete: pos === text.length };
}

/** Number of colour steps on each side of zero. */
export const LEVELS = 5;

/**
 * The colour step of `reward`: an integer in [-levels, levels], 0 for rewards near zero; `scale`
 * is the magnitude that maps to the strongest colour (e.g. the largest |reward| in the selection).
 */
export function rewardBucket(reward: number, scale: number, levels = LEVELS): number {
  if (!Number.isFinite(reward) || !(scale > 0)) return 0;
  const b = Math.round((reward / scale) * levels);
  return Math.max(-levels, Math.min(levels, b));
}

/**
 * The background colour of a step: red for negative rewards, green for positive, stronger with
 * the magnitude; a faint grey for 0. CSS `rgba(...)`, usable as a decoration colour.
 */
export function bucketColour(bucket: number, levels = LEVELS): string {
  const strength = Math.min(1, Math.abs(bucket) / levels);
  const alpha = (0.1 + 0.45 * strength).toFixed(2);
  if (bucket < 0) return `rgba(220, 50, 47, ${alpha})`;
  if (bucket > 0) return `rgba(40, 170, 80, ${alpha})`;
  return "rgba(128, 128, 128, 0.10)";
}

/** The scale for a set of spans: the largest |reward| (1 if there is none). */
export function rewardScale(spans: TokenSpan[]): number {
  const m = spans.reduce((acc, s) => Math.max(acc, Math.abs(s.reward)), 0);
  return m > 0 ? m : 1;
}
