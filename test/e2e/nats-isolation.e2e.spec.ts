import { randomBytes } from "node:crypto";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Event, EventStore, type Message } from "../../gen/orisun/v1/eventstore_pb.js";
import { dropSchema, NATS_URL, PG_URL, withPostgres } from "../support/databases.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";
import { collect } from "../support/streams.js";

const client = (server: SpawnedServer) =>
  createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));

async function until(condition: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Two deployments on two databases, both in the default schema `public`, sharing the test NATS:
 * the case where names made from the schema alone collide.
 */
describe("deployments on different databases sharing one NATS", () => {
  const databases = [0, 1].map(() => `orisun_iso_${randomBytes(5).toString("hex")}`);
  const urls = databases.map((name) => {
    const url = new URL(PG_URL);
    url.pathname = `/${name}`;
    return url.toString();
  });
  const servers: SpawnedServer[] = [];

  beforeAll(async () => {
    await withPostgres("postgres", async (admin) => {
      for (const name of databases) await admin.query(`CREATE DATABASE "${name}"`);
    });
    for (const url of urls) {
      servers.push(await spawnServer({ ORISUN_PG_URL: url, ORISUN_NATS_URL: NATS_URL }));
    }
  });
  afterAll(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    // The streams go first: they are found through the identity stored in each database.
    for (const url of urls) await dropSchema("public", url).catch(() => {});
    await withPostgres("postgres", async (admin) => {
      for (const name of databases) {
        await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      }
    });
  });

  it("each subscriber receives only its own deployment's events", async () => {
    const boundary = "orders";
    const subscribers = servers.map((server) =>
      collect<Event>((signal) => client(server).subscribeToEvents({ boundary }, { signal })),
    );
    try {
      // Subscribed before anything is written, so every event below comes live.
      await new Promise((r) => setTimeout(r, 1_000));
      for (let i = 0; i < 5; i++) {
        for (const [d, server] of servers.entries()) {
          await client(server).saveEvents({
            boundary,
            events: [{ eventId: `d${d}-e${i}`, eventType: `Deployment${d}`, data: "{}" }],
          });
        }
      }
      for (const [d, s] of subscribers.entries()) {
        await until(() => s.got.length >= 5, `deployment ${d}'s 5 events`);
      }
      await new Promise((r) => setTimeout(r, 500));
      for (const [d, s] of subscribers.entries()) {
        expect(s.got.map((e) => e.eventId)).toEqual([0, 1, 2, 3, 4].map((i) => `d${d}-e${i}`));
      }
      for (const [d, server] of servers.entries()) {
        expect(server.output()).not.toContain("is in the stream already");
        expect(server.output(), `deployment ${d}`).toMatch(/"deployment":"[a-z2-7]{16}"/);
      }
      const ids = servers.map((s) => /"deployment":"([a-z2-7]{16})"/.exec(s.output())?.[1]);
      expect(ids[0]).not.toBe(ids[1]);
    } finally {
      await Promise.all(subscribers.map((s) => s.stop()));
    }
  });

  it("pub/sub groups of the same name do not share messages, private subscribers see their own", async () => {
    const members = servers.map((server) =>
      collect<Message>((signal) =>
        (async function* () {
          const responses = client(server).subscribeToPubSub(
            { subject: "jobs.*", consumerName: "workers" },
            { signal },
          );
          for await (const r of responses) if (r.message) yield r.message;
        })(),
      ),
    );
    const watchers = servers.map((server) =>
      collect<Message>((signal) =>
        (async function* () {
          const responses = client(server).subscribeToPubSub({ subject: "jobs.*" }, { signal });
          for await (const r of responses) if (r.message) yield r.message;
        })(),
      ),
    );
    try {
      await new Promise((r) => setTimeout(r, 1_500));
      for (let i = 0; i < 10; i++) {
        for (const [d, server] of servers.entries()) {
          await client(server).publishToPubSub({
            id: `d${d}-m${i}`,
            subject: "jobs.run",
            data: new TextEncoder().encode(`${d}`),
          });
        }
      }
      for (const [d, m] of [...members, ...watchers].entries()) {
        await until(() => m.got.length >= 10, `subscriber ${d}'s 10 messages`);
      }
      await new Promise((r) => setTimeout(r, 500));
      const expected = (d: number) => Array.from({ length: 10 }, (_, i) => `d${d}-m${i}`);
      for (const [d] of servers.entries()) {
        expect(members[d]?.got.map((m) => m.id)).toEqual(expected(d));
        expect(watchers[d]?.got.map((m) => m.id)).toEqual(expected(d));
      }
    } finally {
      await Promise.all([...members, ...watchers].map((m) => m.stop()));
    }
  });
});
