import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import type * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventStore } from "../../gen/orisun/v1/eventstore_pb.js";
import { dropSchema, freshDataDir, freshSchema, PG_URL } from "../support/databases.js";
import { grpcJsEventStore } from "../support/grpc-js.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

/**
 * ORISUN_MAX_READ_BYTES: a read's answer stops at a bound in bytes, so that one request for 10,000
 * large events neither fills the server's memory nor passes what a gRPC client takes (4 MiB).
 */

/** An event whose data is about `bytes` long, numbered so that order can be checked. */
const big = (i: number, bytes: number) => ({
  eventId: `e-${i}-${randomBytes(4).toString("hex")}`,
  eventType: "Big",
  data: JSON.stringify({ i, pad: "x".repeat(bytes) }),
});
const numbers = (events: readonly { data: string }[]) =>
  events.map((e) => (JSON.parse(e.data) as { i: number }).i);
const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** A server on PostgreSQL in a schema of its own for the describe block, removed after it. */
function serverFor(extra: Record<string, string> = {}): () => SpawnedServer {
  let server: SpawnedServer | undefined;
  const env = {
    ORISUN_PG_URL: PG_URL,
    ORISUN_PG_SCHEMA: freshSchema("rb"),
    ORISUN_DATA_DIR: freshDataDir(),
    ...extra,
  };
  beforeAll(async () => {
    server = await spawnServer(env);
  });
  afterAll(async () => {
    await server?.stop();
    await dropSchema(env.ORISUN_PG_SCHEMA);
    rmSync(env.ORISUN_DATA_DIR, { recursive: true, force: true });
  });
  return () => {
    if (!server) throw new Error("the server did not start");
    return server;
  };
}

describe("a read's answer bounded in bytes", () => {
  const running = serverFor();

  it("by default a page of 1 MiB events fits a plain gRPC client's 4 MiB, and paging reads them all", async () => {
    const server = running();
    const client = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
    for (const i of range(12)) {
      await client.saveEvents({ boundary: "large", events: [big(i, 1024 * 1024 - 100)] });
    }
    const grpcJs = grpcJsEventStore(server.port);
    type Page = {
      events: { data: string; position: { commit_position: string; prepare_position: string } }[];
    };
    const getEvents = (request: object): Promise<Page> =>
      new Promise((done, fail) => {
        const call = (grpcJs as unknown as Record<string, (...a: unknown[]) => void>).GetEvents;
        call?.call(
          grpcJs,
          request,
          { deadline: Date.now() + 30_000 },
          (err: grpc.ServiceError | null, res: Page) => (err ? fail(err) : done(res)),
        );
      });
    try {
      const got: Page["events"] = [];
      let from: object | undefined;
      for (let pages = 1; got.length < 12; pages++) {
        expect(pages).toBeLessThanOrEqual(12);
        const page = await getEvents({ boundary: "large", count: 100, from_position: from });
        expect(page.events.length).toBeGreaterThan(0);
        // Four 1 MiB events and their envelopes pass 4 MiB: three at most.
        expect(page.events.length).toBeLessThanOrEqual(3);
        got.push(...page.events);
        const last = page.events.at(-1)?.position;
        from = last && {
          commit_position: last.commit_position,
          prepare_position: String(BigInt(last.prepare_position) + 1n),
        };
      }
      expect(numbers(got)).toEqual(range(12));
    } finally {
      grpcJs.close();
    }
  }, 120_000);
});

describe("ORISUN_MAX_READ_BYTES set", () => {
  const running = serverFor({ ORISUN_MAX_READ_BYTES: String(64 * 1024) });

  it("bounds GetEvents over Connect JSON and ReadForDecision; a subscription catches up on every event in order", async () => {
    const server = running();
    const grpcClient = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
    const events = range(40).map((i) => big(i, 10_000));
    await grpcClient.saveEvents({ boundary: "pages", events: events.slice(0, 20) });
    await grpcClient.saveEvents({ boundary: "pages", events: events.slice(20) });
    const json = createClient(
      EventStore,
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", useBinaryFormat: false }),
    );
    const page = await json.getEvents({ boundary: "pages", count: 40 });
    // 64 KiB holds six events of about 10 KB.
    expect(numbers(page.events)).toEqual(range(6));
    const decision = await json.readForDecision({
      boundary: "pages",
      queries: [{ criteria: { criteria: [{ eventTypes: ["Big"] }] }, count: 40 }],
    });
    expect(numbers(decision.results[0]?.events ?? [])).toEqual(range(6));
    expect(decision.results[0]?.hasMore).toBe(true);

    const abort = new AbortController();
    const received: number[] = [];
    const reading = (async () => {
      for await (const event of grpcClient.subscribeToEvents(
        { boundary: "pages", subscriberName: "" },
        { signal: abort.signal },
      )) {
        received.push(...numbers([event]));
        if (received.length === 41) return;
      }
    })();
    while (received.length < 40) await new Promise((r) => setTimeout(r, 50));
    await grpcClient.saveEvents({ boundary: "pages", events: [big(40, 10)] });
    await reading;
    abort.abort();
    expect(received).toEqual(range(41));
  }, 60_000);
});
