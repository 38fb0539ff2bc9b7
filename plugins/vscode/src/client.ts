/**
 * A small client for the endorm daemon: HTTP/1.1 + JSON over its Unix socket (docs/API.md).
 *
 * No `vscode` import and no runtime dependency: `node:http` with `socketPath`, so it runs (and is
 * tested) in plain Node as well as in the extension host.
 */
import * as http from "node:http";
import * as os from "node:os";
import * as path from "node:path";

/** Per-call options: an overall deadline and a cancellation signal. */
export interface RequestOptions {
  /** Milliseconds for the whole request (connect, queue, scoring, answer). Default: the client's. */
  timeoutMs?: number;
  /** Aborting it abandons the request with an EndormError whose code is `cancelled`. */
  signal?: AbortSignal;
}

/**
 * A failed call. `status` is the HTTP status of a non-2xx answer (the daemon's `message` and `code`
 * are passed through), or 0 when no answer came: `code` is then `no_daemon`, `timeout`,
 * `cancelled` or `bad_response`.
 */
export class EndormError extends Error {
  constructor(
    public readonly status: number,
    public readonly code: string | undefined,
    message: string,
    /** The daemon's error `type` (OpenAI shape), when it sent one. */
    public readonly type?: string,
  ) {
    super(message);
    this.name = "EndormError";
  }
}

/** `GET /health`. */
export interface HealthResponse {
  status: "ok" | "loading" | "degraded";
  models: { id: string; state: string; error?: string }[];
  config_error?: string;
}

/** One entry of `GET /v1/models` (`meta` is null while the model loads). */
export interface ModelInfo {
  id: string;
  object: "model";
  owned_by: string;
  state?: string;
  default?: boolean;
  meta: {
    n_ctx_train: number;
    n_vocab: number;
    n_params: number;
    size_bytes: number;
    chat_template: boolean;
    /** The GGUF file's name (the daemon never shows its directory). */
    file: string;
    [key: string]: unknown;
  } | null;
}

/** A chat message for `format: "chat"`. */
export interface Message {
  role: "system" | "user" | "assistant";
  content: string;
}

/** `POST /v1/score` request. In raw format `prompt` is the context text and must not be empty. */
export interface ScoreRequest {
  candidates: string[];
  model?: string;
  format?: "chat" | "raw";
  prompt?: string;
  messages?: Message[];
  principle?: string;
  aggregate?: "endo" | "endo_mean" | "logprob" | "logprob_mean";
  alpha?: number;
  terminal?: boolean;
  return_tokens?: boolean;
}

/** Per-token detail (`return_tokens`): the pieces `text` concatenate to the candidate. */
export interface TokenScore {
  id: number;
  text: string;
  logprob: number;
  q: number;
  v_next: number;
  reward: number;
}

/** One candidate's scores; `rank` 1 is the best. */
export interface CandidateScore {
  index: number;
  score: number;
  rank: number;
  endo: number;
  endo_mean?: number;
  logprob: number;
  logprob_mean?: number;
  n_tokens: number;
  tokens?: TokenScore[];
}

/** `POST /v1/score` response: `results` in request order, `order` best first. */
export interface ScoreResponse {
  model: string;
  aggregate: string;
  results: CandidateScore[];
  order: number[];
  usage: { prompt_tokens: number; cached_tokens: number; candidate_tokens: number; total_tokens: number };
  timings: { queue_ms: number; prompt_ms: number; candidates_ms: number; total_ms: number };
}

/** `POST /v1/rerank` request (Cohere/Jina shape): documents are answers to `query`, chat format. */
export interface RerankRequest {
  query: string;
  documents: (string | { text: string })[];
  model?: string;
  top_n?: number;
  return_documents?: boolean;
}

/** `POST /v1/rerank` response, best first. */
export interface RerankResponse {
  model: string;
  results: { index: number; relevance_score: number; document?: { text: string } }[];
  usage: { total_tokens: number };
}

/**
 * Where the daemon listens by default, as `endorm serve` decides: `$ENDORM_SOCKET`, else
 * `$XDG_RUNTIME_DIR/endorm/endorm.sock`, else the per-user cache directory.
 */
export function defaultSocket(
  env: NodeJS.ProcessEnv = process.env,
  platform: NodeJS.Platform = process.platform,
  home: string = os.homedir(),
): string {
  if (env.ENDORM_SOCKET) return env.ENDORM_SOCKET;
  const runtime = env.XDG_RUNTIME_DIR;
  if (runtime && platform !== "darwin" && path.isAbsolute(runtime)) {
    return path.join(runtime, "endorm", "endorm.sock");
  }
  if (platform === "darwin") return path.join(home, "Library", "Caches", "endorm", "endorm.sock");
  const xdg = env.XDG_CACHE_HOME;
  const base = xdg && path.isAbsolute(xdg) ? xdg : path.join(home, ".cache");
  return path.join(base, "endorm", "endorm.sock");
}

/** Client construction options. */
export interface ClientOptions {
  /** Unix socket path; default {@link defaultSocket}. */
  socketPath?: string;
  /** Default deadline per request in milliseconds (default 30 000). */
  timeoutMs?: number;
}

/** The daemon's routes used by the extension: health, models, score, rerank. */
export class EndormClient {
  readonly socketPath: string;
  readonly timeoutMs: number;

  constructor(options: ClientOptions = {}) {
    this.socketPath = options.socketPath || defaultSocket();
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  /** `GET /health`: `status` is `ok` once the default model is loaded. */
  health(options?: RequestOptions): Promise<HealthResponse> {
    return this.request<HealthResponse>("GET", "/health", undefined, options);
  }

  /** `GET /v1/models`: the served models. */
  async models(options?: RequestOptions): Promise<ModelInfo[]> {
    const list = await this.request<{ data: ModelInfo[] }>("GET", "/v1/models", undefined, options);
    return list.data;
  }

  /** `POST /v1/score`: score `candidates` as continuations of `prompt` (raw) or answers (chat). */
  score(body: ScoreRequest, options?: RequestOptions): Promise<ScoreResponse> {
    return this.request<ScoreResponse>("POST", "/v1/score", body, options);
  }

  /** `POST /v1/rerank`: `documents` as answers to `query`, best first. */
  rerank(body: RerankRequest, options?: RequestOptions): Promise<RerankResponse> {
    return this.request<RerankResponse>("POST", "/v1/rerank", body, options);
  }

  /** One JSON request; resolves with the parsed 2xx body, rejects with an {@link EndormError}. */
  request<T>(method: "GET" | "POST", route: string, body?: unknown, options: RequestOptions = {}): Promise<T> {
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const signal = options.signal;
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body), "utf8");
    return new Promise<T>((resolve, reject) => {
      if (signal?.aborted) {
        reject(new EndormError(0, "cancelled", "the request was cancelled"));
        return;
      }
      let settled = false;
      const finish = (err: EndormError | null, value?: T) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        if (err) {
          req.destroy();
          reject(err);
        } else {
          resolve(value as T);
        }
      };
      const onAbort = () => finish(new EndormError(0, "cancelled", "the request was cancelled"));
      const timer = setTimeout(
        () =>
          finish(
            new EndormError(
              0,
              "timeout",
              `no answer from the endorm daemon at ${this.socketPath} within ${timeoutMs} ms (${method} ${route})`,
            ),
          ),
        timeoutMs,
      );
      const headers: http.OutgoingHttpHeaders = { accept: "application/json" };
      if (payload) {
        headers["content-type"] = "application/json";
        headers["content-length"] = payload.length;
      }
      const req = http.request(
        { socketPath: this.socketPath, method, path: route, headers, agent: false },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("error", (e) => finish(noDaemon(this.socketPath, e)));
          res.on("end", () => {
            const text = Buffer.concat(chunks).toString("utf8");
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) {
              try {
                finish(null, JSON.parse(text) as T);
              } catch {
                finish(new EndormError(status, "bad_response", `the daemon answered non-JSON: ${text.slice(0, 200)}`));
              }
            } else {
              finish(errorFromBody(status, text));
            }
          });
        },
      );
      req.on("error", (e) => finish(noDaemon(this.socketPath, e)));
      signal?.addEventListener("abort", onAbort, { once: true });
      req.end(payload);
    });
  }
}

/** The daemon's `{"error": {"message", "type", "code"}}` as an EndormError (raw text if not JSON). */
export function errorFromBody(status: number, text: string): EndormError {
  try {
    const err = (JSON.parse(text) as { error?: { message?: string; type?: string; code?: string } }).error;
    if (err && typeof err.message === "string") {
      return new EndormError(status, err.code ?? err.type, err.message, err.type);
    }
  } catch {
    // not JSON: fall through to the raw text
  }
  return new EndormError(status, undefined, text.trim() || `HTTP ${status}`);
}

function noDaemon(socketPath: string, err: Error): EndormError {
  return new EndormError(
    0,
    "no_daemon",
    `cannot reach the endorm daemon at ${socketPath} (${err.message}); start it with ` +
      "`endorm serve`, or set endorm.socket to where it listens",
  );
}
