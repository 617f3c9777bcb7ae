import { spawn } from "node:child_process";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventStore, SaveEventsRequestSchema } from "../../gen/orisun/v1/eventstore_pb.js";
import { dropSchema, freshDataDir, freshSchema, PG_URL } from "../support/databases.js";
import { frame } from "../support/raw-rpc.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

const NATS_URL = process.env.ORISUN_TEST_NATS_URL ?? "nats://127.0.0.1:4222";
const BOUNDARY = "big";
/** 20 MB of history: far more than the socket buffers, so the server is mid-write at a hang-up. */
const BATCHES = 10;
const PER_BATCH = 1_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Subscribers that go away mid-stream, the everyday case: the server's pending writes fail
 * (ECANCELED, EPIPE). That is a debug line, not an error: no stack on stderr, no error-level log.
 */
describe("a subscriber that goes away mid-stream", () => {
  let server: SpawnedServer;
  let env: Record<string, string>;
  beforeAll(async () => {
    env = {
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: freshSchema("hangup"),
      ORISUN_NATS_URL: NATS_URL,
      ORISUN_DATA_DIR: freshDataDir(),
      ORISUN_LOG_LEVEL: "debug",
    };
    server = await spawnServer(env);
    const writer = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
    const data = JSON.stringify({ pad: "x".repeat(2_000) });
    for (let b = 0; b < BATCHES; b++) {
      await writer.saveEvents(
        create(SaveEventsRequestSchema, {
          boundary: BOUNDARY,
          events: Array.from({ length: PER_BATCH }, (_, i) => ({
            eventId: `e${b}-${i}`,
            eventType: "Padded",
            tags: [],
            data,
          })),
        }),
      );
    }
  }, 120_000);
  afterAll(async () => {
    await server?.stop();
    await dropSchema(env.ORISUN_PG_SCHEMA as string);
  });

  /** A Connect streaming call by curl that stops reading after its first bytes, then is killed. */
  async function killedCurl(version: "--http1.1" | "--http2-prior-knowledge"): Promise<void> {
    const curl = spawn("curl", [
      "-sN",
      version,
      "-H",
      "content-type: application/connect+json",
      "--data-binary",
      "@-",
      `${server.url}/orisun.v1.EventStore/SubscribeToEvents`,
    ]);
    curl.stdin.end(frame(Buffer.from(JSON.stringify({ boundary: BOUNDARY }))));
    await new Promise<void>((r) => curl.stdout.once("data", () => r()));
    curl.stdout.pause();
    // The server fills the socket's buffers and waits to write more.
    await sleep(300);
    curl.kill("SIGKILL");
  }

  function problems(): string[] {
    return server
      .output()
      .split("\n")
      .filter((line) => line.includes("handler for rpc") || line.includes('"level":50'));
  }

  const wentAway = () =>
    server
      .output()
      .split("\n")
      .filter((line) => line.includes('"msg":"client went away"')).length;

  it.each(["--http1.1", "--http2-prior-knowledge"] as const)(
    "Connect over %s, killed while the server writes: a debug line, no error",
    async (version) => {
      const before = wentAway();
      await killedCurl(version);
      await expect.poll(wentAway, { timeout: 10_000 }).toBeGreaterThan(before);
      expect(problems()).toEqual([]);
    },
  );

  it("gRPC calls cancelled mid-stream, then the server goes on serving", async () => {
    const client = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
    for (let k = 1; k <= 5; k++) {
      const abort = new AbortController();
      let n = 0;
      await (async () => {
        for await (const _ of client.subscribeToEvents(
          { boundary: BOUNDARY },
          { signal: abort.signal },
        )) {
          if (++n === 100 * k) abort.abort();
        }
      })().catch(() => {});
      expect(n).toBe(100 * k);
    }
    await sleep(500);
    expect(problems()).toEqual([]);
    const page = await client.getEvents({ boundary: BOUNDARY, count: 3 });
    expect(page.events.map((e) => e.eventId)).toEqual(["e0-0", "e0-1", "e0-2"]);
  });
});
