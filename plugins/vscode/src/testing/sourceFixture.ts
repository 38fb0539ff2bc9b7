/**
 * A tiny local HTTP server playing the user's completion source (an OpenAI `/v1/completions` or a
 * llama-server `/infill`) for tests: it records the request bodies and answers what it is told.
 */
import * as http from "node:http";
import type { AddressInfo } from "node:net";

/** A running source fixture. */
export interface SourceFixture {
  url: string;
  /** The JSON bodies received, in order. */
  requests: unknown[];
  close(): Promise<void>;
}

/** What to answer: status and JSON (or raw string) body; `delayMs` holds the answer back. */
export interface SourceAnswer {
  status?: number;
  body: unknown;
  delayMs?: number;
}

/** Start a server on 127.0.0.1 (a free port) that answers every POST with `answer(body)`. */
export async function startSourceFixture(path: string, answer: (body: unknown) => SourceAnswer): Promise<SourceFixture> {
  const requests: unknown[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      if (req.method !== "POST" || req.url !== path) {
        res.writeHead(404).end(JSON.stringify({ error: { message: `no route ${req.method} ${req.url}` } }));
        return;
      }
      const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      requests.push(body);
      const a = answer(body);
      const send = () => {
        if (res.destroyed) return;
        res.writeHead(a.status ?? 200, { "content-type": "application/json" });
        res.end(typeof a.body === "string" ? a.body : JSON.stringify(a.body));
      };
      if (a.delayMs) setTimeout(send, a.delayMs);
      else send();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}${path}`,
    requests,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
