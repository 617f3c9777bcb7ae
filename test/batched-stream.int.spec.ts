import { connect } from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient, type Transport } from "@connectrpc/connect";
import {
  compressionGzip,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import type * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Event, EventSchema, EventStore } from "../gen/orisun/v1/eventstore_pb.js";
import { BATCH_BYTES } from "../server/api/batched-stream.js";
import type { RunningApp } from "../server/app.js";
import { readAllEvents } from "./support/clients.js";
import { startEmbeddedApp } from "./support/embedded-app.js";
import { grpcJsEventStore } from "./support/grpc-js.js";
import { frame } from "./support/raw-rpc.js";

/**
 * Subscriptions send runs of events in one pass through Connect (server/api/batched-stream.ts).
 * On the wire nothing may tell: every event its own envelope, the same bytes as the log's, in
 * every protocol and client, history and live alike, and the carriers never seen.
 */

const boundary = "batched";
const HISTORY = 2_500;

function spec(i: number) {
  // Every 400th event is larger than a carrier on its own; the rest vary around 100 bytes.
  const big = i % 400 === 7;
  return {
    eventId: `e${i}`,
    eventType: i % 2 ? "Odd" : "Even",
    tags: [{ key: "n", value: String(i) }],
    data: JSON.stringify({ i, text: big ? "x".repeat(BATCH_BYTES + 100) : "é😀".repeat(i % 30) }),
    metadata: i % 3 ? "" : JSON.stringify({ by: "test" }),
  };
}

describe("batched subscription streams", () => {
  let app: RunningApp;
  let writer: ReturnType<typeof createClient<typeof EventStore>>;
  let log: Event[] = [];

  beforeAll(async () => {
    app = await startEmbeddedApp();
    writer = createClient(EventStore, createGrpcTransport({ baseUrl: app.url }));
    for (let i = 0; i < HISTORY; i += 50) {
      const events = Array.from({ length: 50 }, (_, k) => spec(i + k));
      await writer.saveEvents({ boundary, events });
    }
  }, 120_000);
  afterAll(() => app?.close());

  const readLog = () => readAllEvents(writer, boundary, 1_000);

  it("sends each event in its own uncompressed envelope to a client that accepts gzip", async () => {
    log = await readLog();
    expect(log.length).toBe(HISTORY);
    const session = connect(app.url);
    try {
      const { headers, envelopes } = await new Promise<{
        headers: Record<string, unknown>;
        envelopes: { flags: number; bytes: Buffer }[];
      }>((resolve, reject) => {
        const req = session.request({
          ":method": "POST",
          ":path": "/orisun.v1.EventStore/SubscribeToEvents",
          "content-type": "application/grpc+proto",
          "grpc-accept-encoding": "identity,deflate,gzip",
          te: "trailers",
        });
        let headers: Record<string, unknown> = {};
        let pending = Buffer.alloc(0);
        const envelopes: { flags: number; bytes: Buffer }[] = [];
        req.on("response", (h) => {
          headers = h;
        });
        req.on("data", (chunk: Buffer) => {
          pending = Buffer.concat([pending, chunk]);
          while (pending.length >= 5 && pending.length >= 5 + pending.readUInt32BE(1)) {
            const length = pending.readUInt32BE(1);
            envelopes.push({ flags: pending[0] ?? -1, bytes: pending.subarray(5, 5 + length) });
            pending = pending.subarray(5 + length);
          }
          if (envelopes.length >= HISTORY) {
            req.close();
            resolve({ headers, envelopes });
          }
        });
        const fail = (why: string) =>
          reject(new Error(`${why} after ${envelopes.length} envelopes`));
        setTimeout(() => fail("timed out"), 20_000).unref();
        req.on("error", reject);
        req.on("close", () => fail("closed"));
        const request = EventStore.method.subscribeToEvents.input;
        req.end(frame(toBinary(request, create(request, { boundary }))));
      });
      expect(headers["grpc-encoding"] ?? "identity").toBe("identity");
      expect(envelopes.length).toBe(HISTORY);
      const wrong = envelopes.findIndex(({ flags, bytes }, i) => {
        const event = fromBinary(EventSchema, bytes);
        return (
          flags !== 0 ||
          event.$unknown !== undefined ||
          !bytes.equals(toBinary(EventSchema, log[i] as Event))
        );
      });
      expect(wrong).toBe(-1);
    } finally {
      session.close();
    }
  });

  it("gives every protocol and client the log, history and then live runs, byte for byte", async () => {
    const transports: Record<string, Transport> = {
      gRPC: createGrpcTransport({ baseUrl: app.url }),
      "gRPC gzip request": createGrpcTransport({
        baseUrl: app.url,
        sendCompression: compressionGzip,
      }),
      "gRPC-Web": createGrpcWebTransport({ baseUrl: app.url, httpVersion: "1.1" }),
      "Connect proto h2": createConnectTransport({ baseUrl: app.url, httpVersion: "2" }),
      "Connect proto h1": createConnectTransport({ baseUrl: app.url, httpVersion: "1.1" }),
      "Connect JSON": createConnectTransport({
        baseUrl: app.url,
        httpVersion: "1.1",
        useBinaryFormat: false,
      }),
    };
    const abort = new AbortController();
    const received: Record<string, Uint8Array[]> = {};
    const failures: unknown[] = [];
    for (const [name, transport] of Object.entries(transports)) {
      const got: Uint8Array[] = [];
      received[name] = got;
      void (async () => {
        const stream = createClient(EventStore, transport).subscribeToEvents(
          { boundary },
          { signal: abort.signal },
        );
        for await (const e of stream) got.push(toBinary(EventSchema, e));
      })().catch((error) => {
        if (!abort.signal.aborted) failures.push(error);
      });
    }
    // @grpc/grpc-js, whose messages are plain objects: compared by id and position.
    const grpcJs = grpcJsEventStore(Number(new URL(app.url).port));
    const grpcJsGot: { event_id: string; position: { prepare_position: string } }[] = [];
    const call = (
      grpcJs as unknown as Record<string, (r: unknown) => grpc.ClientReadableStream<never>>
    ).SubscribeToEvents?.call(grpcJs, { boundary }) as grpc.ClientReadableStream<
      (typeof grpcJsGot)[number]
    >;
    call.on("data", (e) => grpcJsGot.push(e));
    call.on("error", () => {});

    const until = async (check: () => boolean) => {
      const end = Date.now() + 30_000;
      while (!check()) {
        if (failures.length > 0) throw failures[0];
        if (Date.now() > end) throw new Error("timed out");
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    try {
      const all = () =>
        Object.values(received).every((got) => got.length >= log.length) &&
        grpcJsGot.length >= log.length;
      await until(all);
      // Live: one run of 300, one of 1, another of 300 with a carrier-sized event in it.
      for (const [first, size] of [
        [HISTORY, 300],
        [HISTORY + 300, 1],
        [HISTORY + 301, 300],
      ] as const) {
        const events = Array.from({ length: size }, (_, k) => spec(first + k));
        await writer.saveEvents({ boundary, events });
      }
      log = await readLog();
      expect(log.length).toBe(HISTORY + 601);
      await until(all);
      await new Promise((r) => setTimeout(r, 100)); // anything more would show now
      const want = log.map((e) => Buffer.from(toBinary(EventSchema, e)));
      for (const [name, got] of Object.entries(received)) {
        expect(got.length, name).toBe(want.length);
        const wrong = got.findIndex((bytes, i) => !want[i]?.equals(bytes));
        expect(wrong, name).toBe(-1);
      }
      expect(grpcJsGot.map((e) => `${e.event_id}@${e.position.prepare_position}`)).toEqual(
        log.map((e) => `${e.eventId}@${e.position?.preparePosition}`),
      );
    } finally {
      abort.abort();
      call.cancel();
      grpcJs.close();
    }
  });
});
