import { randomBytes } from "node:crypto";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { describe, expect, it } from "vitest";
import { JetStreamPubSub } from "../server/broker/jetstream-pubsub.js";
import { MemoryPubSub } from "../server/broker/memory-pubsub.js";
import { MessageAuth } from "../server/broker/message-auth.js";
import type { PubSub, PubSubMessage } from "../server/broker/pubsub.js";
import { freshSchema, NATS_URL } from "./support/databases.js";

const windows = { retentionMs: 600_000, dedupeWindowMs: 120_000 };

const targets = [
  {
    name: "the in-process broker",
    async open(): Promise<{ pubsub: PubSub; close(): Promise<void> }> {
      const pubsub = new MemoryPubSub(windows);
      return { pubsub, close: () => pubsub.close() };
    },
  },
  {
    name: "JetStream",
    async open(): Promise<{ pubsub: PubSub; close(): Promise<void> }> {
      const nc = await connect({ servers: NATS_URL });
      const pubsub = new JetStreamPubSub(nc, {
        namespace: freshSchema("redeliver"),
        auth: new MessageAuth(randomBytes(32)),
        log: { warn: () => {} },
        ...windows,
      });
      return {
        pubsub,
        async close() {
          await pubsub.close();
          const jsm = await jetstreamManager(nc);
          await jsm.streams.delete(pubsub.stream).catch(() => {});
          await nc.close();
        },
      };
    },
  },
];

async function next(iterator: AsyncIterator<PubSubMessage>): Promise<PubSubMessage> {
  const result = await iterator.next();
  if (result.done) throw new Error("the subscription ended");
  return result.value;
}

describe.each(targets)(
  "the redelivered flag on $name (orisun_pubsub_redelivered_total)",
  (target) => {
    it("is set on a message a member took and left without acknowledging, and only on it", async () => {
      const { pubsub, close } = await target.open();
      const first = new AbortController();
      const second = new AbortController();
      try {
        const a = (await pubsub.subscribe("jobs.*", "workers", first.signal))[
          Symbol.asyncIterator
        ]();
        await pubsub.publish({ id: "m1", subject: "jobs.run", data: new Uint8Array([1]) });
        const taken = await next(a);
        expect(taken.id).toBe("m1");
        expect(taken.redelivered ?? false).toBe(false);
        const b = (await pubsub.subscribe("jobs.*", "workers", second.signal))[
          Symbol.asyncIterator
        ]();
        // Left without asking for the next message: m1 was never acknowledged.
        await a.return?.();
        const again = await next(b);
        expect(again.id).toBe("m1");
        expect(again.redelivered).toBe(true);
        await pubsub.publish({ id: "m2", subject: "jobs.run", data: new Uint8Array([2]) });
        const fresh = await next(b);
        expect(fresh.id).toBe("m2");
        expect(fresh.redelivered ?? false).toBe(false);
        await b.return?.();
      } finally {
        first.abort();
        second.abort();
        await close();
      }
    });
  },
);
