/**
 * Starts the real endorm daemon for tests: `endorm serve --exit-on-eof` on a temporary socket with
 * an empty config, waits for /health to say ok. Binary: $ENDORM_BIN (default
 * ../../target/release/endorm from plugins/vscode); model: $ENDORM_MODEL (default SmolLM2-135M).
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { EndormClient, EndormError } from "../client";

/** plugins/vscode (this file runs from out/testing/). */
const PLUGIN_DIR = path.resolve(__dirname, "..", "..");

export const ENDORM_BIN = process.env.ENDORM_BIN || path.resolve(PLUGIN_DIR, "..", "..", "target", "release", "endorm");
export const ENDORM_MODEL =
  process.env.ENDORM_MODEL ||
  path.join(os.homedir(), ".cache", "endorm", "models", "SmolLM2-135M-Instruct.Q4_1.gguf");

/** A running daemon; `stop()` closes its stdin (it exits) and removes the temp directory. */
export interface Daemon {
  socketPath: string;
  /** With `tcp`: the loopback listener's base URL, its token and the token's file. */
  url?: string;
  token?: string;
  tokenFile?: string;
  dir: string;
  proc: ChildProcess;
  stop(): Promise<void>;
}

/** A free loopback port (closed again before the daemon binds it). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

/** Options of {@link startDaemon}. */
export interface DaemonOptions {
  timeoutMs?: number;
  /** Also listen on a free loopback TCP port, with a fresh token in a file of its own. */
  tcp?: boolean;
}

/** Start the daemon and wait until it serves; rejects (never skips) if it cannot. */
export async function startDaemon(options: DaemonOptions = {}): Promise<Daemon> {
  const timeoutMs = options.timeoutMs ?? 180_000;
  for (const [what, p, env] of [["binary", ENDORM_BIN, "ENDORM_BIN"], ["model", ENDORM_MODEL, "ENDORM_MODEL"]]) {
    if (!fs.existsSync(p)) throw new Error(`no endorm ${what} at ${p} (set ${env})`);
  }
  // Short path: Unix socket paths are limited to 107 bytes.
  const dir = fs.mkdtempSync(path.join("/tmp", "endorm-vsc-"));
  const socketPath = path.join(dir, "e.sock");
  const config = path.join(dir, "endorm.toml");
  fs.writeFileSync(config, ""); // the user's own config must not leak in
  const args = ["serve", "--socket", socketPath, "--exit-on-eof", "--model", ENDORM_MODEL, "--config", config];
  let tcp: Pick<Daemon, "url" | "token" | "tokenFile"> = {};
  if (options.tcp) {
    const port = await freePort();
    const token = crypto.randomBytes(24).toString("hex");
    const tokenFile = path.join(dir, "token");
    fs.writeFileSync(tokenFile, token + "\n", { mode: 0o600 });
    args.push("--listen", `127.0.0.1:${port}`, "--token-file", tokenFile);
    tcp = { url: `http://127.0.0.1:${port}`, token, tokenFile };
  }
  const env = { ...process.env };
  delete env.ENDORM_TOKEN; // the token file above, not the caller's
  const logFd = fs.openSync(path.join(dir, "serve.log"), "w");
  const proc = spawn(ENDORM_BIN, args, { stdio: ["pipe", "ignore", logFd], env });
  fs.closeSync(logFd);
  let exited: number | null | undefined;
  proc.on("exit", (code) => (exited = code));

  const stop = async () => {
    if (exited === undefined) {
      const gone = new Promise<void>((r) => proc.once("exit", () => r()));
      proc.stdin?.end(); // --exit-on-eof
      const killer = setTimeout(() => proc.kill("SIGKILL"), 30_000);
      await gone;
      clearTimeout(killer);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };

  const client = new EndormClient({ socketPath, timeoutMs: 5_000 });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited !== undefined) {
      const log = fs.readFileSync(path.join(dir, "serve.log"), "utf8");
      await stop();
      throw new Error(`endorm serve exited ${exited}: ${log}`);
    }
    try {
      if ((await client.health()).status === "ok") break;
    } catch (e) {
      if (!(e instanceof EndormError)) throw e;
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`endorm serve did not become healthy within ${timeoutMs} ms`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { socketPath, dir, proc, stop, ...tcp };
}
