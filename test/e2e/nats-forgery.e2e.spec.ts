import { randomBytes } from "node:crypto";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Event, EventStore, type Message } from "../../gen/orisun/v1/eventstore_pb.js";
import {
  dropSchema,
  freshSchema,
  NATS_URL,
  PG_URL,
  TEST_DATABASE,
  withPostgres,
} from "../support/databases.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";
import { collect } from "../support/streams.js";

async function until(condition: () => Promise<boolean> | boolean, what: string, ms = 15_000) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** What a forger without the deployment's secret can write: the wire form, well formed. */
function forgedEvent(boundary: string, commit: bigint, prepare: bigint): string {
  return JSON.stringify({
    boundary,
    id: `forged-${prepare}`,
    type: "Forged",
    tags: [],
    data: '{"forged":true}',
    metadata: "",
    commit: commit.toString(),
    prepare: prepare.toString(),
    createdAt: new Date().toISOString(),
  });
}

/**
 * A forger with plain publish rights on NATS: it learns the subjects from the streams (found by
 * a unique boundary or group name, so the test does not depend on how names are formed).
 */
describe("live messages forged on NATS", () => {
  const schema = freshSchema("forge");
  let server: SpawnedServer;
  let nc: NatsConnection;
  let jsm: JetStreamManager;
  const api = () => createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));

  beforeAll(async () => {
    server = await spawnServer({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_NATS_URL: NATS_URL,
    });
    nc = await connect({ servers: NATS_URL });
    jsm = await jetstreamManager(nc);
  });
  afterAll(async () => {
    await server?.stop();
    await nc?.close();
    await dropSchema(schema);
  });

  it("never reach a subscriber: it receives every real event, in order, and the drop is logged", async () => {
    const boundary = `forge_${randomBytes(4).toString("hex")}`;
    const subscriber = collect<Event>((signal) =>
      api().subscribeToEvents({ boundary }, { signal }),
    );
    try {
      const save = (i: number) =>
        api().saveEvents({
          boundary,
          events: [{ eventId: `real-${i}`, eventType: "Real", data: `{"i":${i}}` }],
        });
      await save(1);
      await until(() => subscriber.got.length === 1, "the first event");
      const first = subscriber.got[0]?.position;
      const commit = first?.commitPosition ?? 0n;
      let subject: string | undefined;
      await until(async () => {
        for await (const info of jsm.streams.list()) {
          subject ??= info.config.subjects?.find((s) => s.endsWith(`.${boundary}`));
        }
        return subject !== undefined;
      }, "the boundary's stream");
      const js = jetstream(nc);
      // The next position, with the message id the real event would carry, and one further on.
      for (const [c, p] of [
        [commit + 1n, 2n],
        [commit + 3n, 4n],
      ] as const) {
        await js.publish(
          subject ?? "",
          new TextEncoder().encode(`[${forgedEvent(boundary, c, p)}]`),
          {
            msgID: `${c}:${p}`,
          },
        );
      }
      // A genuine message's signature on another payload.
      let streamName = "";
      for await (const info of jsm.streams.list()) {
        if (info.config.subjects?.includes(subject ?? "")) streamName = info.config.name;
      }
      const genuine = await jsm.streams.getMessage(streamName, { seq: 1 });
      const stolen = headers();
      stolen.set("Orisun-Signature", genuine?.header.get("Orisun-Signature") ?? "none");
      await nc.publish(subject ?? "", `[${forgedEvent(boundary, commit + 2n, 3n)}]`, {
        headers: stolen,
      });
      await new Promise((r) => setTimeout(r, 500));
      for (let i = 2; i <= 6; i++) await save(i);
      await until(() => subscriber.got.length >= 6, "six events");
      await new Promise((r) => setTimeout(r, 500));
      expect(subscriber.got.map((e) => e.eventId)).toEqual(
        [1, 2, 3, 4, 5, 6].map((i) => `real-${i}`),
      );
      expect(subscriber.got.map((e) => e.position?.preparePosition)).toEqual([
        1n,
        2n,
        3n,
        4n,
        5n,
        6n,
      ]);
      expect(server.output()).toContain("failed authentication");
      // The publisher resumed after its own last message, not after a forged one.
      expect(server.output()).not.toContain("publishing keeps failing");
      const secret = await withPostgres(TEST_DATABASE, async (c) => {
        const r = await c.query<{ secret: string }>(
          `SELECT secret FROM "${schema}".orisun_deployment`,
        );
        return r.rows[0]?.secret ?? "";
      });
      expect(secret).toMatch(/^[0-9a-f]{64}$/);
      expect(server.output()).not.toContain(secret);
    } finally {
      await subscriber.stop();
    }
  });

  it("never reach a pub/sub subscriber, and are acknowledged rather than redelivered", async () => {
    const group = `g_${randomBytes(4).toString("hex")}`;
    const messages = (consumerName: string) =>
      collect<Message>((signal) =>
        (async function* () {
          const responses = api().subscribeToPubSub(
            { subject: "alerts", consumerName },
            { signal },
          );
          for await (const r of responses) if (r.message) yield r.message;
        })(),
      );
    const member = messages(group);
    const watcher = messages("");
    try {
      let stream: string | undefined;
      await until(async () => {
        for await (const name of jsm.streams.names()) {
          if (!name.startsWith("ORISUN_PUBSUB_")) continue;
          if (
            await jsm.consumers.info(name, group).then(
              () => true,
              () => false,
            )
          )
            stream = name;
        }
        return stream !== undefined;
      }, "the group's consumer");
      const info = await jsm.streams.info(stream ?? "");
      const prefix = (info.config.subjects?.[0] ?? "").replace(/\.>$/, "");
      // The private subscriber's consumer is made on its own: give it a moment too.
      await new Promise((r) => setTimeout(r, 1_000));
      await jetstream(nc).publish(`${prefix}.alerts`, new TextEncoder().encode("forged"), {
        msgID: "forged-1",
      });
      await api().publishToPubSub({
        id: "real-1",
        subject: "alerts",
        data: new TextEncoder().encode("real"),
      });
      await until(() => member.got.length >= 1 && watcher.got.length >= 1, "the real message");
      await new Promise((r) => setTimeout(r, 500));
      expect(member.got.map((m) => m.id)).toEqual(["real-1"]);
      expect(watcher.got.map((m) => m.id)).toEqual(["real-1"]);
      await until(async () => {
        const c = await jsm.consumers.info(stream ?? "", group);
        return c.num_pending === 0 && c.num_ack_pending === 0;
      }, "the group to have acknowledged both messages");
      expect((await jsm.consumers.info(stream ?? "", group)).num_redelivered).toBe(0);
      expect(server.output()).toContain("failed authentication");
    } finally {
      await Promise.all([member.stop(), watcher.stop()]);
    }
  });
});
