/**
 * Candidates from the user's completion source (no `vscode` import): an OpenAI-compatible
 * `/v1/completions` endpoint asked for `n` choices, or llama-server's `/infill` asked for `n_cmpl`.
 * Uses the global `fetch`.
 */

/** Which API the endpoint speaks. */
export type CompletionKind = "openai" | "llama-server-infill";

/** Settings of the completion source. */
export interface CompletionSourceConfig {
  endpoint: string;
  kind: CompletionKind;
  /** Candidates to ask for. */
  n: number;
  /** Longest candidate in the completion model's tokens. */
  maxTokens: number;
  temperature: number;
  /** `model` for the OpenAI kind; omitted when empty. */
  model?: string;
}

/** Text around the cursor. */
export interface CursorText {
  /** Text before the cursor (already bounded). */
  prefix: string;
  /** Text after the cursor (already bounded); only the infill kind sends it. */
  suffix: string;
}

/** A failed call to the completion source, with its HTTP status (0: no answer). */
export class CompletionSourceError extends Error {
  constructor(public readonly status: number, message: string) {
    super(message);
    this.name = "CompletionSourceError";
  }
}

/**
 * The JSON body for the endpoint. OpenAI kind: `prompt` is the prefix (the suffix is not sent:
 * many OpenAI-compatible servers refuse `suffix`). Infill kind: `input_prefix`/`input_suffix`.
 */
export function buildRequestBody(config: CompletionSourceConfig, text: CursorText): Record<string, unknown> {
  if (config.kind === "llama-server-infill") {
    return {
      input_prefix: text.prefix,
      input_suffix: text.suffix,
      n_predict: config.maxTokens,
      n_cmpl: config.n,
      temperature: config.temperature,
      stream: false,
      cache_prompt: true,
    };
  }
  const body: Record<string, unknown> = {
    prompt: text.prefix,
    n: config.n,
    max_tokens: config.maxTokens,
    temperature: config.temperature,
    stream: false,
  };
  if (config.model) body.model = config.model;
  return body;
}

interface OpenAIChoice {
  text?: unknown;
  index?: unknown;
}

interface InfillResult {
  content?: unknown;
  index?: unknown;
}

/**
 * The candidate texts of a response, in the source's order. OpenAI: `choices[].text` (sorted by
 * `index`). llama-server: one object with `content`, or (with `n_cmpl` > 1) an array of them,
 * sorted by `index` when present. Throws if the shape is neither.
 */
export function parseCompletions(kind: CompletionKind, json: unknown): string[] {
  if (kind === "openai") {
    const choices = (json as { choices?: unknown } | null)?.choices;
    if (!Array.isArray(choices)) {
      throw new CompletionSourceError(0, "the completion source's answer has no `choices` array");
    }
    return byIndex(choices as OpenAIChoice[])
      .map((c) => c.text)
      .filter((t): t is string => typeof t === "string");
  }
  const results = Array.isArray(json) ? (json as InfillResult[]) : [json as InfillResult];
  if (!results.every((r) => r !== null && typeof r === "object" && typeof r.content === "string")) {
    throw new CompletionSourceError(0, "the infill answer is not `{content}` or an array of them");
  }
  return byIndex(results).map((r) => r.content as string);
}

function byIndex<T extends { index?: unknown }>(items: T[]): T[] {
  const hasIndex = items.every((i) => typeof i.index === "number");
  return hasIndex ? [...items].sort((a, b) => (a.index as number) - (b.index as number)) : items;
}

/** Options of one fetch. */
export interface FetchOptions {
  timeoutMs: number;
  signal?: AbortSignal;
}

/**
 * Ask the endpoint for candidates. Rejects with a CompletionSourceError on a non-2xx answer, an
 * unreachable endpoint or the deadline; with the signal's reason (an AbortError) when cancelled.
 */
export async function fetchCompletions(
  config: CompletionSourceConfig,
  text: CursorText,
  options: FetchOptions,
): Promise<string[]> {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, options.timeoutMs);
  const onAbort = () => controller.abort();
  options.signal?.addEventListener("abort", onAbort, { once: true });
  if (options.signal?.aborted) controller.abort();
  try {
    let res: Response;
    let body: string;
    try {
      res = await fetch(config.endpoint, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify(buildRequestBody(config, text)),
        signal: controller.signal,
      });
      body = await res.text();
    } catch (e) {
      if (timedOut) {
        throw new CompletionSourceError(0, `no answer from ${config.endpoint} within ${options.timeoutMs} ms`);
      }
      if (options.signal?.aborted) throw e;
      const cause = (e as { cause?: { message?: string } }).cause?.message ?? (e as Error).message;
      throw new CompletionSourceError(0, `cannot reach the completion source ${config.endpoint}: ${cause}`);
    }
    if (!res.ok) {
      throw new CompletionSourceError(res.status, `${config.endpoint} answered ${res.status}: ${errorText(body)}`);
    }
    let json: unknown;
    try {
      json = JSON.parse(body);
    } catch {
      throw new CompletionSourceError(res.status, `${config.endpoint} answered non-JSON: ${body.slice(0, 200)}`);
    }
    return parseCompletions(config.kind, json);
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onAbort);
  }
}

/** The `error.message` of an OpenAI/llama-server error body, else the (shortened) raw text. */
function errorText(body: string): string {
  try {
    const err = (JSON.parse(body) as { error?: { message?: unknown } | string }).error;
    if (typeof err === "string") return err;
    if (err && typeof err.message === "string") return err.message;
  } catch {
    // not JSON
  }
  return body.slice(0, 300);
}
