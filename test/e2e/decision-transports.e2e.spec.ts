import { create } from "@bufbuild/protobuf";
import { Code, createClient, type Transport } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventStore, type Position, PositionSchema } from "../../gen/orisun/v1/eventstore_pb.js";
import { failure } from "../support/clients.js";
import { dropSchema, freshDataDir, freshSchema, PG_URL } from "../support/databases.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

/** GetEvents' head and ReadForDecision on every transport, and the decision read's validation. */

const pos = (commit: bigint, prepare: bigint) =>
  create(PositionSchema, { commitPosition: commit, preparePosition: prepare });
type Json = Record<string, unknown>;

describe("head and ReadForDecision over gRPC, gRPC-Web, Connect binary, JSON and GET", () => {
  const schema = freshSchema("dtr");
  let server: SpawnedServer;
  let head: Position;
  beforeAll(async () => {
    server = await spawnServer({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_DATA_DIR: freshDataDir(),
      ORISUN_MAX_CRITERIA: "4",
    });
    const rpc = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
    await rpc.saveEvents({
      boundary: "shop",
      events: [
        { eventType: "Ordered", tags: [{ key: "order", value: "o1" }], data: "{}" },
        { eventType: "Ordered", tags: [{ key: "order", value: "o2" }], data: "{}" },
      ],
    });
    const last = await rpc.saveEvents({
      boundary: "shop",
      events: [{ eventType: "Shipped", tags: [{ key: "order", value: "o1" }], data: "{}" }],
    });
    head = last.logPosition ?? pos(0n, 0n);
  });
  afterAll(async () => {
    await server?.stop();
    await dropSchema(schema);
  });

  const transports: [string, () => Transport][] = [
    ["gRPC", () => createGrpcTransport({ baseUrl: server.url })],
    ["gRPC-Web", () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" })],
    [
      "Connect binary",
      () =>
        createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", useBinaryFormat: true }),
    ],
    [
      "Connect JSON",
      () =>
        createConnectTransport({ baseUrl: server.url, httpVersion: "2", useBinaryFormat: false }),
    ],
  ];
  it.each(transports)(
    "%s: head on GetEvents, matched or not, and on ReadForDecision",
    async (_, make) => {
      const rpc = createClient(EventStore, make());
      const matched = await rpc.getEvents({
        boundary: "shop",
        criteria: { criteria: [{ eventTypes: ["Ordered"] }] },
      });
      expect(matched.events).toHaveLength(2);
      expect(matched.head).toEqual(head);
      const none = await rpc.getEvents({
        boundary: "shop",
        criteria: { criteria: [{ eventTypes: ["Refunded"] }] },
      });
      expect(none.events).toHaveLength(0);
      expect(none.head).toEqual(head);
      expect((await rpc.getEvents({ boundary: "empty" })).head).toEqual(pos(0n, 0n));

      const decision = await rpc.readForDecision({
        boundary: "shop",
        queries: [
          { criteria: { criteria: [{ tags: [{ key: "order", value: "o1" }] }] }, count: 1 },
          { criteria: { criteria: [{ eventTypes: ["Refunded"] }] } },
        ],
      });
      expect(decision.head).toEqual(head);
      expect(decision.results.map((r) => [r.events.map((e) => e.eventType), r.hasMore])).toEqual([
        [["Ordered"], true],
        [[], false],
      ]);
      const next = await rpc.readForDecision({
        boundary: "shop",
        at: decision.head,
        queries: [
          {
            criteria: { criteria: [{ tags: [{ key: "order", value: "o1" }] }] },
            afterPosition: decision.results[0]?.events[0]?.position,
          },
        ],
      });
      expect(next.results[0]?.events.map((e) => e.eventType)).toEqual(["Shipped"]);
      expect(next.results[0]?.hasMore).toBe(false);
    },
  );

  it("plain JSON POST and Connect GET, with positions as decimal strings", async () => {
    const headJson = {
      commit_position: String(head.commitPosition),
      prepare_position: String(head.preparePosition),
    };
    const post = await fetch(`${server.url}/orisun.v1.EventStore/ReadForDecision`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        boundary: "shop",
        queries: [{ criteria: { criteria: [{ event_types: ["Shipped"] }] } }],
      }),
    });
    expect(post.status).toBe(200);
    const posted = (await post.json()) as Json;
    expect(posted.head).toEqual({
      commitPosition: headJson.commit_position,
      preparePosition: headJson.prepare_position,
    });

    const get = async (method: string, message: Json) => {
      const query = encodeURIComponent(JSON.stringify(message));
      const r = await fetch(
        `${server.url}/orisun.v1.EventStore/${method}?connect=v1&encoding=json&message=${query}`,
      );
      return { status: r.status, body: (await r.json()) as Json };
    };
    const events = await get("GetEvents", { boundary: "shop", count: 1 });
    expect(events.status).toBe(200);
    expect(events.body.head).toEqual(posted.head);
    const decision = await get("ReadForDecision", {
      boundary: "shop",
      at: headJson,
      queries: [{ criteria: { criteria: [{ event_types: ["Ordered"] }] }, count: 5 }],
    });
    expect(decision.status).toBe(200);
    expect(decision.body.head).toEqual(posted.head);
    const results = decision.body.results as Json[];
    expect(results[0]?.events).toHaveLength(2);
    // JSON omits a false has_more.
    expect(results[0]?.hasMore).toBeUndefined();
  });

  it("refuses bad decision reads with a message naming the field, before reading", async () => {
    const rpc = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
    const q = (eventType: string) => ({ criteria: { criteria: [{ eventTypes: [eventType] }] } });
    const cases: [Parameters<typeof rpc.readForDecision>[0], Code, RegExp][] = [
      [
        { boundary: "shop", queries: [] },
        Code.InvalidArgument,
        /^queries: must contain at least one query/,
      ],
      [{ boundary: "Shop", queries: [q("A")] }, Code.InvalidArgument, /^boundary: must match/],
      [
        { boundary: "shop", queries: [q("A"), { criteria: { criteria: [{}] } }] },
        Code.InvalidArgument,
        /^queries\[1\]\.criteria\.criteria\[0\]: a criterion needs tags, event_types or both/,
      ],
      [
        { boundary: "shop", at: pos(head.commitPosition + 1n, 0n), queries: [q("A")] },
        Code.InvalidArgument,
        /^at: must not be above the boundary's head/,
      ],
      [
        { boundary: "shop", queries: [q("A"), q("B"), q("C"), q("D"), q("E")] },
        Code.ResourceExhausted,
        /^queries: must contain at most 4 queries/,
      ],
      [
        {
          boundary: "shop",
          queries: [
            {
              criteria: {
                criteria: [{ eventTypes: ["A"] }, { eventTypes: ["B"] }, { eventTypes: ["C"] }],
              },
            },
            { criteria: { criteria: [{ eventTypes: ["D"] }, { eventTypes: ["E"] }] } },
          ],
        },
        Code.ResourceExhausted,
        /^queries: must have at most 4 criteria in all queries together/,
      ],
      [
        {
          boundary: "shop",
          queries: [
            { ...q("A"), count: 9_000 },
            { ...q("B"), count: 1_001 },
          ],
        },
        Code.ResourceExhausted,
        /^queries: counts must add up to at most 10000 events/,
      ],
      [
        { boundary: "shop", queries: [{ ...q("A"), afterPosition: pos(2n ** 63n, 0n) }] },
        Code.InvalidArgument,
        /^queries\[0\]\.after_position\.commit_position: must be at most/,
      ],
    ];
    for (const [request, code, message] of cases) {
      const error = await failure(rpc.readForDecision(request));
      expect(error.code, error.rawMessage).toBe(code);
      expect(error.rawMessage).toMatch(message);
    }
  });
});
