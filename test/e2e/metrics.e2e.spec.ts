import { create } from "@bufbuild/protobuf";
import { type Client, Code, createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type Event,
  EventStore,
  type Message,
  SaveEventsRequestSchema,
} from "../../gen/orisun/v1/eventstore_pb.js";
import { failure } from "../support/clients.js";
import { dropSchema, freshDataDir, freshSchema, NATS_URL, PG_URL } from "../support/databases.js";
import { parseExposition, type Sample, sampleValue } from "../support/exposition.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";
import { collect } from "../support/streams.js";

const targets = [
  {
    name: "embedded",
    postgres: false,
    env: (): Record<string, string> => ({ ORISUN_DATA_DIR: freshDataDir() }),
  },
  {
    name: "PostgreSQL + NATS",
    postgres: true,
    env: (): Record<string, string> => ({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: freshSchema("metrics"),
      ORISUN_NATS_URL: NATS_URL,
      ORISUN_DATA_DIR: freshDataDir(),
    }),
  },
];

async function until(condition: () => Promise<boolean>, what: string, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const SAVE = { service: "orisun.v1.EventStore", method: "SaveEvents" };
const SUBSCRIBE = { service: "orisun.v1.EventStore", method: "SubscribeToEvents" };

describe.each(targets)("GET /metrics on $name", (target) => {
  let server: SpawnedServer;
  let env: Record<string, string>;
  let client: Client<typeof EventStore>;

  async function scrape(): Promise<Sample[]> {
    const res = await fetch(`${server.url}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/);
    return parseExposition(await res.text());
  }

  beforeAll(async () => {
    env = { ...target.env(), ORISUN_METRICS_BOUNDARY_LABELS: "2" };
    server = await spawnServer(env);
    client = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
  });
  afterAll(async () => {
    await server?.stop();
    if (env.ORISUN_PG_SCHEMA) await dropSchema(env.ORISUN_PG_SCHEMA);
  });

  it("moves by exactly the appends, bytes, condition failures and transactions made", async () => {
    const before = await scrape();
    let bytes = 0;
    for (let i = 0; i < 5; i++) {
      const events = [0, 1].map((j) => {
        const data = JSON.stringify({ n: i, j, text: "é".repeat(i) });
        bytes += Buffer.byteLength(data);
        return { eventId: `e${i}-${j}`, eventType: "Counted", data };
      });
      await client.saveEvents({ boundary: "m_one", events });
    }
    const refused = await failure(
      client.saveEvents(
        create(SaveEventsRequestSchema, {
          boundary: "m_one",
          consistencyCondition: {
            consistencyMarker: { commitPosition: 1n, preparePosition: 2n },
            criteria: { criteria: [{ eventTypes: ["Counted"] }] },
          },
          events: [{ eventId: "late", eventType: "Counted", data: "{}" }],
        }),
      ),
    );
    expect(refused.code).toBe(Code.Aborted);
    await client.saveEvents({
      boundary: "m_two",
      events: [{ eventId: "two", eventType: "X", data: "{}" }],
    });
    // The third boundary is past ORISUN_METRICS_BOUNDARY_LABELS=2.
    await client.saveEvents({
      boundary: "m_three",
      events: [{ eventId: "three", eventType: "X", data: "{}" }],
    });
    const after = await scrape();
    const delta = (name: string, labels: Record<string, string> = {}) =>
      sampleValue(after, name, labels) - sampleValue(before, name, labels);

    expect(delta("orisun_events_appended_total", { boundary: "m_one" })).toBe(10);
    expect(delta("orisun_appended_bytes_total", { boundary: "m_one" })).toBe(bytes);
    expect(delta("orisun_condition_failures_total", { boundary: "m_one" })).toBe(1);
    expect(delta("orisun_events_appended_total", { boundary: "m_two" })).toBe(1);
    expect(delta("orisun_events_appended_total", { boundary: "_other" })).toBe(1);
    expect(after.some((s) => s.labels.boundary === "m_three")).toBe(false);
    expect(delta("orisun_rpc_duration_seconds_count", { ...SAVE, code: "ok" })).toBe(7);
    expect(delta("orisun_rpc_duration_seconds_count", { ...SAVE, code: "aborted" })).toBe(1);
    expect(sampleValue(after, "orisun_rpc_in_flight", SAVE)).toBe(0);
    // One client awaiting each append: every request is a transaction of its own.
    expect(delta("orisun_append_batch_requests_count")).toBe(8);
    expect(delta("orisun_append_batch_requests_sum")).toBe(8);
    expect(delta("orisun_append_batch_events_sum")).toBe(12);
    expect(delta("orisun_append_transaction_duration_seconds_count")).toBe(8);
    if (target.postgres) {
      expect(sampleValue(after, "orisun_pg_pool_max")).toBe(10);
      expect(after.some((s) => s.name === "orisun_pg_pool_connections")).toBe(true);
      expect(after.some((s) => s.name === "orisun_pg_pool_waiting")).toBe(true);
      // The publisher carries the boundaries to JetStream, then has nothing left to publish.
      await until(async () => {
        const s = await scrape();
        return (
          sampleValue(s, "orisun_publisher_boundaries") >= 1 &&
          s.some(
            (x) => x.name === "orisun_publisher_lag_events" && x.labels.boundary === "m_one",
          ) &&
          s.every((x) => x.name !== "orisun_publisher_lag_events" || x.value === 0)
        );
      }, "the publisher to report m_one with no lag");
    } else {
      expect(after.some((s) => s.name.startsWith("orisun_pg_pool"))).toBe(false);
    }
    expect(sampleValue(after, "nodejs_eventloop_lag_seconds")).toBeGreaterThanOrEqual(0);
    expect(sampleValue(after, "process_cpu_seconds_total")).toBeGreaterThan(0);
  });

  it("counts calls refused before their message was decoded, with their code", async () => {
    const before = await scrape();
    const tooMany = create(SaveEventsRequestSchema, {
      boundary: "",
      events: Array.from({ length: 10_001 }, () => ({})),
    });
    // The unary gRPC path, then Connect's own handler.
    expect((await failure(client.saveEvents(tooMany))).code).toBe(Code.ResourceExhausted);
    const json = createClient(
      EventStore,
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
    );
    expect((await failure(json.saveEvents(tooMany))).code).toBe(Code.ResourceExhausted);
    const malformed = await fetch(`${server.url}/orisun.v1.EventStore/SaveEvents`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{",
    });
    expect(malformed.status).toBe(400);
    const after = await scrape();
    const delta = (labels: Record<string, string>) =>
      sampleValue(after, "orisun_rpc_duration_seconds_count", labels) -
      sampleValue(before, "orisun_rpc_duration_seconds_count", labels);
    expect(delta({ ...SAVE, code: "resource_exhausted" })).toBe(2);
    expect(delta({ ...SAVE, code: "invalid_argument" })).toBe(1);
    expect(sampleValue(after, "orisun_rpc_in_flight", SAVE)).toBe(0);
  });

  it("counts a subscription while it is open, with its lag, and its end as canceled", async () => {
    const before = await scrape();
    await client.saveEvents({
      boundary: "m_sub",
      events: [1, 2, 3].map((i) => ({ eventId: `s${i}`, eventType: "X", data: "{}" })),
    });
    const subscriber = collect<Event>((signal) =>
      client.subscribeToEvents({ boundary: "m_sub" }, { signal }),
    );
    try {
      await until(async () => subscriber.got.length === 3, "the history");
      await until(async () => {
        const s = await scrape();
        return (
          sampleValue(s, "orisun_subscriptions_open") === 1 &&
          sampleValue(s, "orisun_rpc_in_flight", SUBSCRIBE) === 1
        );
      }, "the open subscription");
      await client.saveEvents({
        boundary: "m_sub",
        events: [{ eventId: "s4", eventType: "X", data: "{}" }],
      });
      await until(async () => subscriber.got.length === 4, "the live event");
      // Everything sent: no lag (the boundary is past the label cap of this server).
      await until(async () => {
        const s = await scrape();
        return sampleValue(s, "orisun_subscription_lag_events", { boundary: "_other" }) === 0;
      }, "a lag of 0");
    } finally {
      await subscriber.stop();
    }
    await until(async () => {
      const s = await scrape();
      return (
        sampleValue(s, "orisun_subscriptions_open") === 0 &&
        sampleValue(s, "orisun_rpc_in_flight", SUBSCRIBE) === 0 &&
        sampleValue(s, "orisun_rpc_duration_seconds_count", { ...SUBSCRIBE, code: "canceled" }) -
          sampleValue(before, "orisun_rpc_duration_seconds_count", {
            ...SUBSCRIBE,
            code: "canceled",
          }) ===
          1 &&
        s.every((x) => x.name !== "orisun_subscription_lag_events")
      );
    }, "the subscription to be gone from the metrics");
  });

  it("counts pub/sub messages published and delivered", async () => {
    const before = await scrape();
    const member = collect<Message>((signal) =>
      (async function* () {
        const responses = client.subscribeToPubSub(
          { subject: "metrics.*", consumerName: "metrics_group" },
          { signal },
        );
        for await (const r of responses) if (r.message) yield r.message;
      })(),
    );
    try {
      await new Promise((r) => setTimeout(r, 1_500));
      for (let i = 0; i < 3; i++) {
        await client.publishToPubSub({
          id: `p${i}`,
          subject: "metrics.x",
          data: new TextEncoder().encode(String(i)),
        });
      }
      await until(async () => member.got.length === 3, "the 3 messages");
      await until(async () => {
        const s = await scrape();
        const delta = (name: string) => sampleValue(s, name) - sampleValue(before, name);
        return (
          delta("orisun_pubsub_published_total") === 3 &&
          delta("orisun_pubsub_delivered_total") === 3 &&
          delta("orisun_pubsub_redelivered_total") === 0
        );
      }, "published and delivered to count 3");
    } finally {
      await member.stop();
    }
  });
});

describe("ORISUN_METRICS=off", () => {
  let server: SpawnedServer;
  const schema = freshSchema("metrics_off");
  beforeAll(async () => {
    server = await spawnServer({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_DATA_DIR: freshDataDir(),
      ORISUN_METRICS: "off",
    });
  });
  afterAll(async () => {
    await server?.stop();
    await dropSchema(schema);
  });

  it("has no /metrics route, and the API works as before", async () => {
    expect((await fetch(`${server.url}/metrics`)).status).toBe(404);
    const client = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
    const result = await client.saveEvents({
      boundary: "off",
      events: [{ eventId: "a", eventType: "X", data: "{}" }],
    });
    expect(result.logPosition?.commitPosition).toBe(1n);
  });
});
