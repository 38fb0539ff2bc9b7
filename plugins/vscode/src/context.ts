/** Bounding the text sent to endorm as context (no `vscode` import). */

/**
 * What the daemon needs in raw format when there is no text before the cursor: raw scoring predicts
 * the first candidate token from the context's last token, so an empty prompt is refused (400).
 */
export const EMPTY_CONTEXT = "\n";

/**
 * The last `maxChars` UTF-16 units of `text` (a surrogate pair cut in half is dropped), never empty:
 * an empty result becomes {@link EMPTY_CONTEXT}.
 */
export function boundContext(text: string, maxChars: number): string {
  const limit = Math.max(1, Math.floor(maxChars));
  let out = text.length > limit ? text.slice(text.length - limit) : text;
  if (out.length > 0 && isLowSurrogate(out.charCodeAt(0))) out = out.slice(1);
  return out.length > 0 ? out : EMPTY_CONTEXT;
}

/**
 * The first `maxChars` UTF-16 units of `text` (the text after the cursor, for infill); a surrogate
 * pair cut in half is dropped. May be empty.
 */
export function boundSuffix(text: string, maxChars: number): string {
  const limit = Math.max(0, Math.floor(maxChars));
  let out = text.length > limit ? text.slice(0, limit) : text;
  if (out.length > 0 && isHighSurrogate(out.charCodeAt(out.length - 1))) out = out.slice(0, -1);
  return out;
}

function isLowSurrogate(c: number): boolean {
  return c >= 0xdc00 && c <= 0xdfff;
}

function isHighSurrogate(c: number): boolean {
  return c >= 0xd800 && c <= 0xdbff;
}
