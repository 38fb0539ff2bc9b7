/**
 * A small client for the endorm daemon: HTTP/1.1 + JSON over its Unix socket, or over its loopback
 * TCP listener with the bearer token (docs/API.md, docs/SERVER.md "Over TCP").
 *
 * No `vscode` import and no runtime dependency: `node:http`, so it runs (and is tested) in plain
 * Node as well as in the extension host.
 */
import * as fs from "node:fs";
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

// The wire types, named as in src/api/ (docs/API.md); src/test/schema.test.ts checks every field
// here against docs/openapi.json. Only the routes the extension calls are typed.

/** `GET /health`. */
export interface HealthResponse {
  status: "ok" | "loading" | "degraded";
  models: ModelHealth[];
  config_error?: string;
}

/** One model in `GET /health`. */
export interface ModelHealth {
  id: string;
  state: string;
  error?: string;
}

/** `GET /v1/models`. */
export interface ModelList {
  object: "list";
  data: ModelCard[];
}

/** One entry of `GET /v1/models` (`meta` is null while the model loads). */
export interface ModelCard {
  id: string;
  object: "model";
  owned_by: string;
  state?: string;
  default?: boolean;
  meta: ModelCardMeta | null;
}

/** A loaded model's metadata. */
export interface ModelCardMeta {
  n_ctx_train: number;
  n_vocab: number;
  n_params: number;
  size_bytes: number;
  chat_template: boolean;
  /** The GGUF file's name (the daemon never shows its directory). */
  file: string;
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
  aggregate?: "endo" | "endo_mean" | "logprob" | "logprob_mean" | "endo_lc";
  alpha?: number;
  terminal?: boolean;
  return_tokens?: boolean;
  /** Score at most this many tokens of each candidate. */
  max_candidate_tokens?: number;
  /** Weight (0 < w <= 100) of the candidates' agreement with each other (each result's `agreement`). */
  consensus?: number;
  /** Subtract the aggregate after a neutral context (each result's `neutral`). */
  contrast?: "neutral";
  /** Add log p(instruction | candidate) (each result's `reviewer`). */
  reviewer?: boolean;
  /** Subtract the aggregate under this served model (each result's `reference`). */
  reference_model?: string;
}

/** Per-token detail (`return_tokens`): the pieces `text` concatenate to the candidate. */
export interface TokenDetail {
  id: number;
  text: string;
  logprob: number;
  q: number;
  v_next: number;
  reward: number;
}

/** One candidate's scores; `rank` 1 is the best. */
export interface CandidateResult {
  index: number;
  score: number;
  rank: number;
  endo: number;
  endo_mean: number;
  logprob: number;
  logprob_mean: number;
  /** `endo` less the model's baseline per token times `n_tokens`. */
  endo_lc?: number;
  n_tokens: number;
  agreement?: number;
  neutral?: number;
  reviewer?: number;
  reference?: number;
  tokens?: TokenDetail[];
}

/** Token counts of a score request. */
export interface Usage {
  prompt_tokens: number;
  cached_tokens: number;
  candidate_tokens: number;
  /** Candidate tokens decoded: `candidate_tokens - shared_candidate_tokens`. */
  decoded_candidate_tokens: number;
  /** Candidate tokens a shared beginning spared (the prefix tree decodes it once). */
  shared_candidate_tokens: number;
  total_tokens: number;
}

/** Where a score request's time went, in milliseconds. */
export interface Timings {
  queue_ms: number;
  prompt_ms: number;
  candidates_ms: number;
  total_ms: number;
}

/** `POST /v1/score` response: `results` in request order, `order` best first. */
export interface ScoreResponse {
  model: string;
  aggregate: "endo" | "endo_mean" | "logprob" | "logprob_mean" | "endo_lc";
  /** How the request was read: its `format`, else "chat", or "raw" for a model without a chat template. */
  format: "chat" | "raw";
  reference_model?: string;
  results: CandidateResult[];
  order: number[];
  usage: Usage;
  timings: Timings;
}

/**
 * The per-user runtime directory of the daemon, as `endorm serve` decides (src/paths.rs):
 * `$XDG_RUNTIME_DIR/endorm`, else the per-user cache directory of the `directories` crate.
 */
export function runtimeDir(
  env: NodeJS.ProcessEnv = process.env,
  platform: NodeJS.Platform = process.platform,
  home: string = os.homedir(),
): string {
  const runtime = env.XDG_RUNTIME_DIR;
  if (runtime && platform !== "darwin" && platform !== "win32" && path.isAbsolute(runtime)) {
    return path.join(runtime, "endorm");
  }
  if (platform === "darwin") return path.join(home, "Library", "Caches", "endorm");
  if (platform === "win32") {
    return path.win32.join(env.LOCALAPPDATA || path.win32.join(home, "AppData", "Local"), "endorm", "cache");
  }
  const xdg = env.XDG_CACHE_HOME;
  const base = xdg && path.isAbsolute(xdg) ? xdg : path.join(home, ".cache");
  return path.join(base, "endorm");
}

/** Where the daemon listens by default: `$ENDORM_SOCKET`, else `<runtime dir>/endorm.sock`. */
export function defaultSocket(
  env: NodeJS.ProcessEnv = process.env,
  platform: NodeJS.Platform = process.platform,
  home: string = os.homedir(),
): string {
  if (env.ENDORM_SOCKET) return env.ENDORM_SOCKET;
  return path.join(runtimeDir(env, platform, home), "endorm.sock");
}

/** The daemon's default TCP token file: `<runtime dir>/token` (created by `endorm serve --listen`). */
export function defaultTokenFile(
  env: NodeJS.ProcessEnv = process.env,
  platform: NodeJS.Platform = process.platform,
  home: string = os.homedir(),
): string {
  return (platform === "win32" ? path.win32 : path).join(runtimeDir(env, platform, home), "token");
}

/**
 * The TCP bearer token: the file `tokenFile` names, else `$ENDORM_TOKEN`, else the daemon's default
 * token file. Read on every request, so a daemon started (and its token written) after the
 * extension is found. Throws an EndormError with code `no_token` that says where it looked.
 */
export function readToken(tokenFile = "", env: NodeJS.ProcessEnv = process.env): string {
  if (!tokenFile && env.ENDORM_TOKEN) return env.ENDORM_TOKEN.trim();
  const file = tokenFile || defaultTokenFile(env);
  let token: string;
  try {
    token = fs.readFileSync(file, "utf8").trim();
  } catch (e) {
    throw new EndormError(
      0,
      "no_token",
      `cannot read the endorm TCP token from ${file} (${(e as Error).message}); ` +
        "set endorm.tokenFile to the daemon's token file, or ENDORM_TOKEN",
    );
  }
  if (!token) throw new EndormError(0, "no_token", `the endorm token file ${file} is empty`);
  return token;
}

/** Client construction options: the Unix socket, or the TCP listener with its token. */
export interface ClientOptions {
  /** Unix socket path; default {@link defaultSocket}. Ignored when `url` is set. */
  socketPath?: string;
  /**
   * Base URL of the daemon's loopback TCP listener (`endorm serve --listen 127.0.0.1:8765`),
   * `http://127.0.0.1:8765`. When set, requests go there with `Authorization: Bearer TOKEN`.
   */
  url?: string;
  /** The bearer token for `url`, or a function that returns it (called for every request). */
  token?: string | (() => string);
  /** Default deadline per request in milliseconds (default 30 000). */
  timeoutMs?: number;
}

/** The daemon's routes used by the extension: health, models, score. */
export class EndormClient {
  /** Where the daemon is: the socket path, or the TCP base URL. */
  readonly where: string;
  readonly timeoutMs: number;
  private readonly socketPath?: string;
  private readonly url?: string;
  private readonly token?: string | (() => string);

  constructor(options: ClientOptions = {}) {
    if (options.url) {
      this.url = options.url.replace(/\/+$/, "");
      this.token = options.token;
      this.where = this.url;
    } else {
      this.socketPath = options.socketPath || defaultSocket();
      this.where = this.socketPath;
    }
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  /** `GET /health`: `status` is `ok` once the default model is loaded. */
  health(options?: RequestOptions): Promise<HealthResponse> {
    return this.request<HealthResponse>("GET", "/health", undefined, options);
  }

  /** `GET /v1/models`: the served models. */
  async models(options?: RequestOptions): Promise<ModelCard[]> {
    const list = await this.request<ModelList>("GET", "/v1/models", undefined, options);
    return list.data;
  }

  /** `POST /v1/score`: score `candidates` as continuations of `prompt` (raw) or answers (chat). */
  score(body: ScoreRequest, options?: RequestOptions): Promise<ScoreResponse> {
    return this.request<ScoreResponse>("POST", "/v1/score", body, options);
  }

  /** Where and how to connect: `node:http` options without method, headers and agent. */
  private target(route: string): http.RequestOptions & { authorization?: string } {
    if (!this.url) return { socketPath: this.socketPath, path: route };
    let base: URL;
    try {
      base = new URL(this.url);
    } catch {
      throw new EndormError(0, "bad_url", `endorm.url is not a URL: ${this.url}`);
    }
    if (base.protocol !== "http:") {
      throw new EndormError(0, "bad_url", `endorm.url must be http://HOST:PORT (the daemon serves plain HTTP on loopback), not ${this.url}`);
    }
    const token = typeof this.token === "function" ? this.token() : this.token;
    return {
      host: base.hostname.replace(/^\[|\]$/g, ""),
      port: base.port || 80,
      path: base.pathname.replace(/\/+$/, "") + route,
      authorization: token ? `Bearer ${token}` : undefined,
    };
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
      let target: ReturnType<EndormClient["target"]>;
      try {
        target = this.target(route);
      } catch (e) {
        reject(e);
        return;
      }
      const { authorization, ...where } = target;
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
              `no answer from the endorm daemon at ${this.where} within ${timeoutMs} ms (${method} ${route})`,
            ),
          ),
        timeoutMs,
      );
      const headers: http.OutgoingHttpHeaders = { accept: "application/json" };
      if (authorization) headers.authorization = authorization;
      if (payload) {
        headers["content-type"] = "application/json";
        headers["content-length"] = payload.length;
      }
      const req = http.request({ ...where, method, headers, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", (e) => finish(this.noDaemon(e)));
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
      });
      req.on("error", (e) => finish(this.noDaemon(e)));
      signal?.addEventListener("abort", onAbort, { once: true });
      req.end(payload);
    });
  }

  private noDaemon(err: Error): EndormError {
    const how = this.url
      ? "start it with `endorm serve --listen HOST:PORT`, or set endorm.url to where it listens"
      : "start it with `endorm serve`, or set endorm.socket to where it listens";
    return new EndormError(0, "no_daemon", `cannot reach the endorm daemon at ${this.where} (${err.message}); ${how}`);
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
