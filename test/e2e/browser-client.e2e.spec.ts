import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import type { Browser, Page } from "playwright-core";
import { build } from "vite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createOrisunClient } from "../../client-web/src/index.js";
import { launchChromium } from "../support/browser.js";
import { dropSchema, freshSchema, PG_URL } from "../support/databases.js";
import { NATS_URL } from "../support/live.js";
import { freePort, type SpawnedServer, spawnServer } from "../support/spawn-server.js";
import { tempDir } from "../support/temp.js";

// The client library alone, bundled by Vite into a page served from another origin, so every
// call is a real cross-origin fetch through the server's CORS rules.
type Orisun = typeof import("../../client-web/src/index.js");
declare global {
  interface Window {
    Orisun: Orisun;
    seen: { events: string[]; states: string[]; done: boolean; error?: string };
    stop: () => void;
  }
}

const PAGE = `<!doctype html><meta charset="utf-8"><title>library</title>
<link rel="icon" href="data:,">
<script type="module">import * as Orisun from "./orisun-client.js"; window.Orisun = Orisun;</script>`;

describe("the client library in Chromium, cross-origin, over HTTP/1.1", () => {
  const schema = freshSchema("webclient");
  const boundary = "web_client";
  const outDir = tempDir("orisun-client-bundle-");
  let pageServer: Server;
  let pageOrigin: string;
  let serverPort: number;
  let server: SpawnedServer;
  let browser: Browser;
  let page: Page;
  const wire: string[] = [];
  const start = () =>
    spawnServer({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_NATS_URL: NATS_URL,
      ORISUN_PORT: String(serverPort),
      ORISUN_CORS_ORIGINS: pageOrigin,
    });

  beforeAll(async () => {
    await build({
      configFile: false,
      logLevel: "warn",
      build: {
        outDir,
        emptyOutDir: true,
        lib: { entry: "client-web/src/index.ts", formats: ["es"], fileName: "orisun-client" },
      },
    });
    const bundle = readFileSync(join(outDir, "orisun-client.js"));
    pageServer = createServer((req, res) => {
      if (req.url === "/orisun-client.js") {
        res.writeHead(200, { "content-type": "text/javascript" }).end(bundle);
      } else res.writeHead(200, { "content-type": "text/html" }).end(PAGE);
    });
    const pagePort = await freePort();
    await new Promise<void>((ok) => pageServer.listen(pagePort, "127.0.0.1", ok));
    pageOrigin = `http://127.0.0.1:${pagePort}`;
    serverPort = await freePort();
    server = await start();
    browser = await launchChromium();
    page = await browser.newPage();
    // The wire protocol of every response, as Chromium's network layer reports it.
    const cdp = await page.context().newCDPSession(page);
    await cdp.send("Network.enable");
    cdp.on("Network.responseReceived", ({ response }) => {
      if (response.url.startsWith(server.url)) wire.push(response.protocol ?? "?");
    });
    await page.goto(`${pageOrigin}/`);
    await page.waitForFunction(() => window.Orisun !== undefined);
  });

  afterAll(async () => {
    await browser?.close();
    await server?.stop();
    pageServer?.close();
    await dropSchema(schema);
  });

  for (const protocol of ["connect", "grpc-web"] as const) {
    it(`${protocol}: appends and reads, and errors reach the page with their codes`, async () => {
      const result = await page.evaluate(
        async ({ url, boundary, protocol }) => {
          const { createOrisunClient, isConditionFailed, codeName, ConnectError } = window.Orisun;
          const client = createOrisunClient({ baseUrl: url, boundary, protocol });
          const tag = { cart: `c-${protocol}` };
          const first = await client.save([{ type: "ItemAdded", tags: tag, data: { sku: "a" } }], {
            condition: { query: { types: ["ItemAdded"], tags: tag } },
          });
          const read = await client.read({ query: { tags: tag } });
          const failure = async (call: () => Promise<unknown>) => {
            try {
              await call();
              return "no error";
            } catch (e) {
              const error = ConnectError.from(e);
              return `${codeName(error.code)} ${isConditionFailed(e)} ${error.rawMessage}`;
            }
          };
          return {
            first: `${first.commitPosition}:${first.preparePosition}`,
            read: read.map((e) => `${e.eventType} ${e.data}`),
            // The same decision again, from "nothing seen": someone (we) already added an item.
            conflict: await failure(() =>
              client.save([{ type: "ItemAdded", tags: tag, data: { sku: "b" } }], {
                condition: { query: { types: ["ItemAdded"], tags: tag } },
              }),
            ),
            invalid: await failure(() => client.read({ boundary: "Bad-Name" })),
          };
        },
        { url: server.url, boundary, protocol },
      );
      expect(result.first).toMatch(/^\d+:\d+$/);
      expect(result.read).toEqual(['ItemAdded {"sku":"a"}']);
      expect(result.conflict).toMatch(/^ABORTED true /);
      expect(result.invalid).toMatch(/^INVALID_ARGUMENT false boundary: must match/);
    });
  }

  for (const protocol of ["connect", "grpc-web"] as const) {
    it(`${protocol}: reads with their head and decides with ReadForDecision in the browser`, async () => {
      const result = await page.evaluate(
        async ({ url, boundary, protocol }) => {
          const { createOrisunClient, compose, projection } = window.Orisun;
          const client = createOrisunClient({ baseUrl: url, boundary, protocol });
          const show = (p: { commitPosition: bigint; preparePosition: bigint } | undefined) =>
            `${p?.commitPosition}:${p?.preparePosition}`;
          const stock = `sku-${protocol}`;
          const before = await client.readAt({ query: { types: ["Reserved"], tags: { stock } } });
          const units = projection<number, { units: number }>({
            initial: 5,
            query: { types: ["Reserved"], tags: { stock } },
            fold: (left, e) => left - e.data.units,
          });
          const orders = (buyer: string) =>
            projection<number>({
              initial: 0,
              query: { types: ["Reserved"], tags: { buyer } },
              fold: (n) => n + 1,
            });
          // Twelve racing deciders of four buyers for five units, two per buyer at most.
          const outcomes = await Promise.all(
            Array.from({ length: 12 }, (_, i) => {
              const buyer = `b-${protocol}-${i % 4}`;
              return client.decide(
                compose({ left: units, mine: orders(buyer) }),
                ({ left, mine }) =>
                  left < 1 || mine >= 2
                    ? undefined
                    : [{ type: "Reserved", tags: { stock, buyer }, data: { units: 1 } }],
                { maxAttempts: 50 },
              );
            }),
          );
          const after = await client.readAt({ query: { types: ["Reserved"], tags: { stock } } });
          return {
            before: { events: before.events.length, head: show(before.head) },
            appended: outcomes.filter((o) => o.position !== undefined).length,
            stored: after.events.length,
            perBuyer: Math.max(
              ...[0, 1, 2, 3].map(
                (b) =>
                  after.events.filter((e) => e.tags.some((t) => t.value === `b-${protocol}-${b}`))
                    .length,
              ),
            ),
            headIsLast: show(after.head) === show(after.events.at(-1)?.position),
          };
        },
        { url: server.url, boundary, protocol },
      );
      expect(result.before.events).toBe(0);
      expect(result.before.head).toMatch(/^\d+:\d+$/);
      expect(result.appended).toBe(5);
      expect(result.stored).toBe(5);
      expect(result.perBuyer).toBeLessThanOrEqual(2);
      expect(result.headIsLast).toBe(true);
    });
  }

  it("subscribes: history, then live events, then resumes from its last position after the server restarts", async () => {
    const writer = createOrisunClient({ baseUrl: server.url, boundary });
    await writer.save([{ type: "Tick", tags: { clock: "k" }, data: { n: 1 } }]);
    await page.evaluate(
      ({ url, boundary }) => {
        const client = window.Orisun.createOrisunClient({ baseUrl: url, boundary });
        const control = new AbortController();
        window.stop = () => control.abort();
        window.seen = { events: [], states: [], done: false };
        void (async () => {
          try {
            for await (const event of client.subscribe({
              query: { types: ["Tick"] },
              signal: control.signal,
              backoff: { initialMs: 100, maxMs: 500 },
              onState: (s) => window.seen.states.push(s.state),
            }))
              window.seen.events.push(event.data);
          } catch (e) {
            window.seen.error = String(e);
          } finally {
            window.seen.done = true;
          }
        })();
      },
      { url: server.url, boundary },
    );
    const seen = () => page.evaluate(() => window.seen);
    await expect.poll(async () => (await seen()).events).toEqual(['{"n":1}']);
    await expect.poll(async () => (await seen()).states.at(-1)).toBe("live");

    const before = Date.now();
    await writer.save([{ type: "Tick", tags: { clock: "k" }, data: { n: 2 } }]);
    await expect.poll(async () => (await seen()).events.length, { interval: 20 }).toBe(2);
    expect(Date.now() - before).toBeLessThan(1_000);

    // The server goes away (SIGTERM ends streams with UNAVAILABLE) and comes back on the same port.
    const stopping = Date.now();
    await server.stop();
    // Its connections close as their streams end; it does not wait out the 10 s grace period.
    expect(Date.now() - stopping).toBeLessThan(5_000);
    await expect.poll(async () => (await seen()).states).toContain("reconnecting");
    server = await start();
    await writer.save([{ type: "Tick", tags: { clock: "k" }, data: { n: 3 } }]);
    await expect
      .poll(async () => (await seen()).events, { timeout: 15_000 })
      .toEqual(['{"n":1}', '{"n":2}', '{"n":3}']);
    expect((await seen()).states.at(-1)).toBe("live");

    // Abort ends the iteration quietly.
    await page.evaluate(() => window.stop());
    await expect.poll(async () => (await seen()).done).toBe(true);
    const final = await seen();
    expect(final.error).toBeUndefined();
    expect(final.states.at(-1)).toBe("closed");
    expect(final.events).toHaveLength(3);
  });

  it("publishes and receives pub/sub messages", async () => {
    const got = await page.evaluate(
      async ({ url }) => {
        const client = window.Orisun.createOrisunClient({ baseUrl: url });
        const control = new AbortController();
        const received: string[] = [];
        const decoder = new TextDecoder();
        const reading = (async () => {
          for await (const m of client.subscribePubSub("chat.*", { signal: control.signal })) {
            received.push(`${m.subject} ${decoder.decode(m.data)}`);
            if (received.some((r) => r.endsWith("last"))) control.abort();
          }
        })();
        // A new private subscription gets what is published once its consumer exists.
        for (let i = 0; i < 50 && received.length === 0; i++) {
          await client.publish("chat.room1", `hello ${i}`);
          await new Promise((r) => setTimeout(r, 100));
        }
        await client.publish("chat.room2", "last");
        await reading;
        return received;
      },
      { url: server.url },
    );
    expect(got[0]).toMatch(/^chat\.room1 hello \d+$/);
    expect(got.at(-1)).toBe("chat.room2 last");
  });

  it("answers CORS preflights for the allowed origin with the Connect and gRPC-Web headers", async () => {
    const preflight = await fetch(`${server.url}/orisun.v1.EventStore/SaveEvents`, {
      method: "OPTIONS",
      headers: {
        origin: pageOrigin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,connect-protocol-version,x-grpc-web",
      },
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers.get("access-control-allow-origin")).toBe(pageOrigin);
    const allowed = preflight.headers.get("access-control-allow-headers") ?? "";
    for (const h of ["Content-Type", "Connect-Protocol-Version", "X-Grpc-Web", "Grpc-Timeout"])
      expect(allowed.toLowerCase()).toContain(h.toLowerCase());

    const call = await fetch(`${server.url}/orisun.v1.EventStore/GetEvents`, {
      method: "POST",
      headers: { origin: pageOrigin, "content-type": "application/json" },
      body: JSON.stringify({ boundary }),
    });
    const exposed = (call.headers.get("access-control-expose-headers") ?? "").toLowerCase();
    for (const h of ["grpc-status", "grpc-message", "grpc-status-details-bin"])
      expect(exposed).toContain(h);

    const stranger = await fetch(`${server.url}/orisun.v1.EventStore/GetEvents`, {
      method: "OPTIONS",
      headers: { origin: "http://evil.example", "access-control-request-method": "POST" },
    });
    expect(stranger.headers.get("access-control-allow-origin")).toBeNull();
  });

  it("made every call, streams included, over HTTP/1.1", () => {
    expect(wire.length).toBeGreaterThan(0);
    expect(new Set(wire)).toEqual(new Set(["http/1.1"]));
  });
});
