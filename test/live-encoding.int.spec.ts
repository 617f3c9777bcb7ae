import { create, toBinary } from "@bufbuild/protobuf";
import { createClient, type Transport } from "@connectrpc/connect";
import {
  compressionGzip,
  createConnectTransport,
  createGrpcTransport,
} from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Event, EventSchema, EventStore } from "../gen/orisun/v1/eventstore_pb.js";
import { toProtoEvent } from "../server/api/convert.js";
import { isBinaryCall, LiveEncodings } from "../server/api/live-encoding.js";
import type { RunningApp } from "../server/app.js";
import type { StoredEvent } from "../server/store/types.js";
import { startEmbeddedApp } from "./support/embedded-app.js";

const stored: StoredEvent = {
  boundary: "orders",
  id: "e-1",
  type: "Placed",
  tags: [
    { key: "order", value: "o1" },
    { key: "ünï", value: "😀" },
  ],
  data: '{"total":12.5,"note":"a \\"quoted\\" word"}',
  metadata: '{"by":"test"}',
  position: { commit: 9_007_199_254_740_993n, prepare: 2n ** 63n - 1n },
  createdAt: new Date("2026-12-02T01:02:03.456Z"),
};

describe("LiveEncodings", () => {
  it("writes exactly the bytes of the whole message through connect's binary serialisation", () => {
    const encodings = new LiveEncodings();
    const shell = encodings.forCall(stored, true);
    expect(toBinary(EventSchema, shell)).toEqual(toBinary(EventSchema, toProtoEvent(stored)));
    // The same object for the next subscriber, and the same bytes for batched calls: no second
    // encoding, and no message built for binary calls at all.
    expect(encodings.forCall(stored, true)).toBe(shell);
    expect(encodings.bytes(stored)).toEqual(toBinary(EventSchema, toProtoEvent(stored)));
    expect(encodings.counts).toEqual({ messages: 0, binary: 1 });
    // JSON gets the whole message, built once as well.
    expect(encodings.forCall(stored, false)).toEqual(toProtoEvent(stored));
    expect(encodings.forCall(stored, false)).toBe(encodings.forCall(stored, false));
    expect(encodings.counts).toEqual({ messages: 1, binary: 1 });
  });

  it.each([
    ["application/grpc", true],
    ["application/grpc+proto", true],
    ["application/grpc-web+proto", true],
    ["application/grpc-web", true],
    ["application/connect+proto", true],
    ["application/connect+proto; charset=utf-8", true],
    ["application/connect+json", false],
    ["application/grpc+json", false],
    ["application/grpc-web+json", false],
    ["application/json", false],
    ["application/proto", true],
    ["application/protobuf", false],
    ["application/grpc+protobuf", false],
    [null, false],
  ])("takes %s as binary: %s", (contentType, binary) => {
    expect(isBinaryCall(contentType)).toBe(binary);
  });
});

/** Follows a stream in the background; `until` waits for a predicate on what arrived. */
function follow(stream: AsyncIterable<Event>) {
  const got: Event[] = [];
  let failed: unknown;
  void (async () => {
    try {
      for await (const e of stream) got.push(e);
    } catch (error) {
      failed = error;
    }
  })();
  return {
    got,
    async until(check: (events: Event[]) => boolean, timeoutMs = 20_000) {
      const end = Date.now() + timeoutMs;
      while (!check(got)) {
        if (failed) throw failed;
        if (Date.now() > end) throw new Error(`timed out with ${got.length} events`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}

describe("live events are encoded once for all their subscribers", () => {
  let app: RunningApp;
  beforeAll(async () => {
    app = await startEmbeddedApp();
  });
  afterAll(() => app?.close());

  it("one conversion and one binary encoding per event across gRPC, Connect and JSON subscribers, each getting exactly its matches", async () => {
    const transports: { name: string; binary: boolean; transport: Transport }[] = [
      { name: "gRPC", binary: true, transport: createGrpcTransport({ baseUrl: app.url }) },
      {
        name: "Connect proto h2",
        binary: true,
        transport: createConnectTransport({
          baseUrl: app.url,
          httpVersion: "2",
          useBinaryFormat: true,
        }),
      },
      {
        name: "Connect proto h1",
        binary: true,
        transport: createConnectTransport({
          baseUrl: app.url,
          httpVersion: "1.1",
          useBinaryFormat: true,
        }),
      },
      {
        name: "Connect JSON",
        binary: false,
        transport: createConnectTransport({
          baseUrl: app.url,
          httpVersion: "1.1",
          useBinaryFormat: false,
        }),
      },
      {
        // A compressed request is not batched (batched-stream.ts): the shared shell message.
        name: "gRPC gzip",
        binary: true,
        transport: createGrpcTransport({ baseUrl: app.url, sendCompression: compressionGzip }),
      },
    ];
    const queries: {
      name: string;
      request: {
        criteria?: {
          criteria: { eventTypes?: string[]; tags?: { key: string; value: string }[] }[];
        };
      };
    }[] = [
      { name: "all", request: {} },
      { name: "type A", request: { criteria: { criteria: [{ eventTypes: ["A"] }] } } },
      {
        name: "tag odd",
        request: { criteria: { criteria: [{ tags: [{ key: "parity", value: "odd" }] }] } },
      },
    ];
    const boundary = "encoded";
    const writer = createClient(EventStore, transports[0]?.transport as Transport);
    const abort = new AbortController();
    const subscribers = transports.flatMap((t) =>
      queries.map((q) => ({
        name: `${t.name} ${q.name}`,
        binary: t.binary,
        query: q.name,
        stream: follow(
          createClient(EventStore, t.transport).subscribeToEvents(
            { boundary, ...q.request },
            { signal: abort.signal },
          ),
        ),
      })),
    );
    try {
      // Each subscriber is live once it has an event appended after it opened (its history
      // was empty); "ready" matches every query.
      await new Promise((r) => setTimeout(r, 500));
      await writer.saveEvents({
        boundary,
        events: [
          { eventId: "ready", eventType: "A", tags: [{ key: "parity", value: "odd" }], data: "{}" },
        ],
      });
      for (const s of subscribers) await s.stream.until((got) => got.length === 1);
      const before = { ...app.encodings.counts };

      const n = 40;
      const ids: string[] = [];
      for (let i = 0; i < n; i += 2) {
        const pair = [i, i + 1].map((k) => ({
          eventId: `e${k}`,
          eventType: k % 3 === 0 ? "A" : "B",
          tags: [
            { key: "parity", value: k % 2 === 0 ? "even" : "odd" },
            { key: "n", value: String(k) },
          ],
          data: JSON.stringify({ k, text: "é".repeat(k) }),
          metadata: k % 4 === 0 ? "" : JSON.stringify({ m: k }),
        }));
        ids.push(...pair.map((e) => e.eventId));
        await writer.saveEvents({ boundary, events: pair });
      }
      const expected: Record<string, string[]> = {
        all: ids,
        "type A": ids.filter((_, k) => k % 3 === 0),
        "tag odd": ids.filter((_, k) => k % 2 === 1),
      };
      for (const s of subscribers) {
        const want = ["ready", ...(expected[s.query] ?? [])];
        await s.stream.until((got) => got.length >= want.length);
        // A moment for anything that should not come.
        await new Promise((r) => setTimeout(r, 50));
        expect(
          s.stream.got.map((e) => e.eventId),
          s.name,
        ).toEqual(want);
      }
      // Every event went to batched and unbatched binary subscribers and to JSON ones: one
      // conversion each (for JSON), one binary encoding each, however many subscribers got it.
      expect(app.encodings.counts.messages - before.messages).toBe(n);
      expect(app.encodings.counts.binary - before.binary).toBe(n);

      // What each subscriber received is the event as the log holds it.
      const { events: log } = await writer.getEvents({ boundary, count: 1_000 });
      const byId = new Map(log.map((e) => [e.eventId, e]));
      for (const s of subscribers) {
        for (const e of s.stream.got) {
          expect(toBinary(EventSchema, create(EventSchema, e)), s.name).toEqual(
            toBinary(EventSchema, byId.get(e.eventId) as Event),
          );
        }
      }
    } finally {
      abort.abort();
    }
  });
});
