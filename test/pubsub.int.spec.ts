import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  PublishRequestSchema,
  SubscribeRequestSchema,
  type SubscribeResponse,
} from "../gen/orisun/v1/eventstore_pb.js";
import { pubsubHandler } from "../server/api/pubsub-handler.js";
import type { ValidationContext } from "../server/api/validate.js";
import {
  DEFAULT_PUBSUB_STREAM_MAX_BYTES,
  JetStreamPubSub,
} from "../server/broker/jetstream-pubsub.js";
import { MemoryPubSub } from "../server/broker/memory-pubsub.js";
import { MessageAuth } from "../server/broker/message-auth.js";
import type { PubSub, PubSubMessage } from "../server/broker/pubsub.js";
import { StoreError } from "../server/store/errors.js";
import type { EventStore } from "../server/store/event-store.js";
import { freshSchema } from "./support/databases.js";
import { startOwnNatsServer } from "./support/nats-server.js";

const NATS_URL = process.env.ORISUN_TEST_NATS_URL ?? "nats://127.0.0.1:4222";
const MINUTE = 60_000;
/** The key a deployment would keep in its database; processes of one deployment share it. */
const auth = new MessageAuth(randomBytes(32));
const quiet = { warn: () => {} };

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const text = (m: PubSubMessage) => decoder.decode(m.data);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls until `check` holds; the brokers deliver asynchronously. */
async function eventually(check: () => boolean, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

interface Reader {
  readonly got: PubSubMessage[];
  /** Settles when the subscription ends; rejects with its error. */
  readonly done: Promise<void>;
  stop(): void;
}

/** A member that reads until stopped, taking `workMs` per message, as a busy client would. */
async function join(pubsub: PubSub, subject: string, name: string, workMs = 0): Promise<Reader> {
  const abort = new AbortController();
  const subscription = await pubsub.subscribe(subject, name, abort.signal);
  const got: PubSubMessage[] = [];
  const done = (async () => {
    for await (const m of subscription) {
      got.push(m);
      if (workMs > 0) await sleep(workMs);
    }
  })();
  done.catch(() => {});
  return { got, done, stop: () => abort.abort() };
}

async function publishAll(pubsub: PubSub, subject: string, ids: readonly string[]): Promise<void> {
  for (const id of ids) await pubsub.publish({ id, subject, data: encoder.encode(`data ${id}`) });
}

const range = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}${i}`);
const ids = (...readers: Reader[]) => readers.flatMap((r) => r.got.map((m) => m.id)).sort();

interface Setup {
  readonly pubsub: PubSub;
  close(): Promise<void>;
}

interface Target {
  readonly name: string;
  open(): Promise<Setup>;
}

const windows = { retentionMs: 10 * MINUTE, dedupeWindowMs: 2 * MINUTE };
const streams: { nc: NatsConnection; stream: string }[] = [];

const targets: readonly Target[] = [
  {
    name: "the in-process broker",
    async open() {
      const pubsub = new MemoryPubSub(windows);
      return { pubsub, close: () => pubsub.close() };
    },
  },
  {
    name: "JetStream",
    async open() {
      const nc = await connect({ servers: NATS_URL });
      const pubsub = new JetStreamPubSub(nc, {
        namespace: freshSchema("ps"),
        auth,
        log: quiet,
        ...windows,
      });
      streams.push({ nc, stream: pubsub.stream });
      return {
        pubsub,
        close: async () => {
          await pubsub.close();
          const jsm = await jetstreamManager(nc);
          await jsm.streams.delete(pubsub.stream).catch(() => {});
          await nc.close();
        },
      };
    },
  },
];

afterAll(async () => {
  // Streams of tests that failed before their own cleanup.
  const nc = await connect({ servers: NATS_URL });
  const jsm = await jetstreamManager(nc);
  for (const { stream } of streams) await jsm.streams.delete(stream).catch(() => {});
  await nc.close();
});

describe.each(targets)("pub/sub on $name", (target) => {
  let setup: Setup;
  let pubsub: PubSub;
  beforeEach(async () => {
    setup = await target.open();
    pubsub = setup.pubsub;
  });
  afterEach(() => setup.close());

  it("delivers a message to every group whose subject matches", async () => {
    const all = await join(pubsub, "orders.*", "all_orders");
    const created = await join(pubsub, "orders.created", "created_only");
    await publishAll(pubsub, "orders.created", range("c", 5));
    await publishAll(pubsub, "orders.updated", range("u", 2));
    await eventually(() => all.got.length === 7 && created.got.length === 5, "both groups");
    expect(ids(all)).toEqual([...range("c", 5), ...range("u", 2)].sort());
    expect(ids(created)).toEqual(range("c", 5).sort());
    expect(created.got[0]).toMatchObject({ id: "c0", subject: "orders.created" });
    expect(text(created.got[0] as PubSubMessage)).toBe("data c0");
  });

  it("gives each message of a group to exactly one of its members, and every member a share", async () => {
    const members = [
      await join(pubsub, "jobs", "workers", 5),
      await join(pubsub, "jobs", "workers", 5),
      await join(pubsub, "jobs", "workers", 5),
    ];
    const sent = range("j", 60);
    await publishAll(pubsub, "jobs", sent);
    await eventually(() => ids(...members).length >= sent.length, "all messages");
    await sleep(300);
    expect(ids(...members)).toEqual([...sent].sort());
    for (const m of members) expect(m.got.length).toBeGreaterThan(0);
  });

  it("keeps a named group's messages while it has no member, for the next one", async () => {
    const first = await join(pubsub, "mail.*", "mailer");
    await publishAll(pubsub, "mail.sent", ["before"]);
    await eventually(() => first.got.length === 1, "the first message");
    first.stop();
    await first.done;
    await publishAll(pubsub, "mail.sent", range("m", 10));
    const second = await join(pubsub, "mail.*", "mailer");
    await eventually(() => second.got.length >= 10, "the messages published meanwhile");
    await sleep(200);
    expect(second.got.map((m) => m.id)).toEqual(range("m", 10));
  });

  it("starts a new group at its first subscription, and a private one at its own", async () => {
    await publishAll(pubsub, "news", ["old"]);
    const group = await join(pubsub, "news", "readers");
    const own = await join(pubsub, "news", "");
    await publishAll(pubsub, "news", ["new"]);
    await eventually(() => group.got.length === 1 && own.got.length === 1, "the new message");
    await sleep(200);
    expect(ids(group)).toEqual(["new"]);
    expect(ids(own)).toEqual(["new"]);
  });

  it("hands a message its member took but did not confirm to another member", async () => {
    const abort = new AbortController();
    const dropping = (await pubsub.subscribe("tasks", "crew", abort.signal))[
      Symbol.asyncIterator
    ]();
    await publishAll(pubsub, "tasks", ["t0", "t1"]);
    expect((await dropping.next()).value).toMatchObject({ id: "t0" });
    // Asking for t1 confirms t0.
    expect((await dropping.next()).value).toMatchObject({ id: "t1" });
    const other = await join(pubsub, "tasks", "crew");
    await dropping.return?.();
    await eventually(() => other.got.length === 1, "the redelivered message");
    await publishAll(pubsub, "tasks", ["t2"]);
    await eventually(() => other.got.length === 2, "the next message");
    await sleep(200);
    expect(other.got.map((m) => m.id)).toEqual(["t1", "t2"]);
  });

  it("redelivers when a member's signal aborts mid-flight", async () => {
    const abort = new AbortController();
    const dropping = (await pubsub.subscribe("tasks.x", "crew2", abort.signal))[
      Symbol.asyncIterator
    ]();
    await publishAll(pubsub, "tasks.x", ["a"]);
    expect((await dropping.next()).value).toMatchObject({ id: "a" });
    abort.abort();
    expect((await dropping.next()).done).toBe(true);
    const other = await join(pubsub, "tasks.x", "crew2");
    await eventually(() => other.got.length === 1, "the redelivered message");
    expect(other.got[0]?.id).toBe("a");
  });

  it("matches the wildcards * (one token) and > (one or more)", async () => {
    const one = await join(pubsub, "a.*", "one");
    const many = await join(pubsub, "a.>", "many");
    const middle = await join(pubsub, "*.b.*", "middle");
    const every = await join(pubsub, ">", "every");
    const subjects = ["a", "a.b", "a.b.c", "x.b.c", "x.y"];
    for (const subject of subjects) await publishAll(pubsub, subject, [subject]);
    await eventually(() => every.got.length === subjects.length, "every message");
    await sleep(300);
    expect(ids(one)).toEqual(["a.b"]);
    expect(ids(many)).toEqual(["a.b", "a.b.c"]);
    expect(ids(middle)).toEqual(["a.b.c", "x.b.c"]);
    expect(ids(every)).toEqual([...subjects].sort());
    expect(every.got.map((m) => m.subject)).toEqual(subjects);
  });

  it("delivers a republished id once", async () => {
    const reader = await join(pubsub, "pay", "payments");
    await pubsub.publish({ id: "p1", subject: "pay", data: encoder.encode("first") });
    await pubsub.publish({ id: "p1", subject: "pay", data: encoder.encode("again") });
    await pubsub.publish({ id: "p2", subject: "pay", data: encoder.encode("other") });
    await eventually(() => reader.got.length === 2, "two messages");
    await sleep(300);
    expect(reader.got.map((m) => [m.id, text(m)])).toEqual([
      ["p1", "first"],
      ["p2", "other"],
    ]);
  });

  it("shows a private subscription only what is published while it is connected", async () => {
    await publishAll(pubsub, "ticks", ["before"]);
    const reader = await join(pubsub, "ticks", "");
    const other = await join(pubsub, "ticks", "");
    await publishAll(pubsub, "ticks", ["during1", "during2"]);
    await eventually(() => reader.got.length === 2 && other.got.length === 2, "both");
    reader.stop();
    await reader.done;
    await publishAll(pubsub, "ticks", ["after"]);
    await eventually(() => other.got.length === 3, "the last message");
    await sleep(200);
    expect(ids(reader)).toEqual(["during1", "during2"]);
    expect(ids(other)).toEqual(["after", "during1", "during2"]);
  });

  it("refuses another subject for an existing group, with or without members", async () => {
    const member = await join(pubsub, "invoices.*", "billing");
    const attempt = pubsub.subscribe("invoices.paid", "billing", new AbortController().signal);
    await expect(attempt).rejects.toMatchObject({ kind: "invalid", field: "subject" });
    await expect(attempt).rejects.toThrow(/"billing" exists with subject "invoices\.\*"/);
    member.stop();
    await member.done;
    await expect(
      pubsub.subscribe(">", "billing", new AbortController().signal),
    ).rejects.toBeInstanceOf(StoreError);
    const again = await join(pubsub, "invoices.*", "billing");
    again.stop();
  });

  it("ends its subscriptions on close, and then refuses work", async () => {
    const named = await join(pubsub, "bye", "leaving");
    const own = await join(pubsub, "bye", "");
    await pubsub.close();
    await named.done;
    await own.done;
    await expect(
      pubsub.publish({ id: "x", subject: "bye", data: new Uint8Array() }),
    ).rejects.toMatchObject({ kind: "unavailable" });
  });

  describe("through the RPC handlers", () => {
    const validation: ValidationContext = {
      limits: {
        maxEventsPerSave: 1,
        maxEventDataBytes: 1,
        maxTagsPerEvent: 1,
        maxTagBytes: 1,
        maxRequestBytes: 1024,
        maxCriteria: 1,
        maxMessageBytes: 64,
        maxReadBytes: 4 * 1024 * 1024,
      },
      boundaries: undefined,
    };
    const handler = (shutdown = new AbortController().signal) =>
      pubsubHandler({
        // The pub/sub handlers never touch the event store.
        store: undefined as unknown as EventStore,
        validation,
        shutdown,
        pubsub,
        maxMessageBytes: 64,
      });
    const context = (signal: AbortSignal) => ({ signal }) as HandlerContext;
    const publish = (subject: string, id: string, data = "x") =>
      handler().publishToPubSub(
        create(PublishRequestSchema, { id, subject, data: encoder.encode(data) }),
        context(new AbortController().signal),
      );
    const subscribe = (subject: string, consumerName: string, signal: AbortSignal) =>
      handler().subscribeToPubSub(
        create(SubscribeRequestSchema, { subject, consumerName }),
        context(signal),
      ) as AsyncGenerator<SubscribeResponse>;

    it("makes an id for a message published without one", async () => {
      const stream = subscribe("ids", "", new AbortController().signal);
      const first = stream.next();
      await sleep(200);
      await publish("ids", "");
      const got = (await first).value as SubscribeResponse;
      expect(got.message?.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-/);
      expect(got.message?.subject).toBe("ids");
      await stream.return(undefined);
    });

    it("confirms a message only once the handler's yield has resumed", async () => {
      const abort = new AbortController();
      const stream = subscribe("rpc", "rpc_group", abort.signal);
      const first = stream.next();
      await sleep(200);
      await publish("rpc", "r1");
      expect((await first).value?.message?.id).toBe("r1");
      // The client went away before Connect wrote r1: the generator is ended at its yield.
      await stream.return(undefined);
      const other = await join(pubsub, "rpc", "rpc_group");
      await eventually(() => other.got.length === 1, "the redelivered message");
      expect(other.got[0]?.id).toBe("r1");
    });

    it("rejects bad input before any work, naming the field", async () => {
      await expect(publish("a.*", "i")).rejects.toMatchObject({
        kind: "invalid",
        field: "subject",
      });
      await expect(publish("a", "i", "x".repeat(65))).rejects.toMatchObject({
        kind: "too_large",
        field: "data",
      });
      await expect(publish("a", "i\n")).rejects.toMatchObject({ kind: "invalid", field: "id" });
      const bad = subscribe("a", "no.dots", new AbortController().signal);
      await expect(bad.next()).rejects.toMatchObject({ kind: "invalid", field: "consumer_name" });
    });

    it("ends a subscription with UNAVAILABLE when the server shuts down", async () => {
      const shutdown = new AbortController();
      const stream = handler(shutdown.signal).subscribeToPubSub(
        create(SubscribeRequestSchema, { subject: "down", consumerName: "stay" }),
        context(new AbortController().signal),
      ) as AsyncGenerator<SubscribeResponse>;
      const first = stream.next();
      await sleep(200);
      shutdown.abort();
      await expect(first).rejects.toMatchObject({ kind: "unavailable" });
    });
  });
});

describe("the in-process broker's buffer", () => {
  it("keeps at most the newest messages of a group without members", async () => {
    const pubsub = new MemoryPubSub({ ...windows, maxBufferedMessages: 3 });
    const first = await join(pubsub, "q", "capped");
    first.stop();
    await publishAll(pubsub, "q", range("q", 5));
    const second = await join(pubsub, "q", "capped");
    await eventually(() => second.got.length === 3, "the buffered messages");
    expect(ids(second)).toEqual(["q2", "q3", "q4"]);
    await pubsub.close();
  });

  it("remembers ids for the dedupe window within the bytes cap, forgetting the oldest first", async () => {
    // Each 8-character id takes 2 * 8 + 64 = 80 bytes of the estimate: 100 fit in 8,000.
    const pubsub = new MemoryPubSub({ ...windows, maxBufferedBytes: 8_000 });
    const reader = await join(pubsub, "d", "dedupe");
    const sent = Array.from({ length: 150 }, (_, i) => `id${String(i).padStart(6, "0")}`);
    await publishAll(pubsub, "d", sent);
    await eventually(() => reader.got.length === 150, "every first publish");
    // The newest 100 are still remembered; the 50 before them were forgotten early.
    await publishAll(pubsub, "d", [...sent.slice(0, 3), ...sent.slice(-3)]);
    await eventually(() => reader.got.length === 153, "the forgotten ids again");
    await sleep(100);
    expect(ids(reader).filter((id, i, all) => all.indexOf(id) !== i)).toEqual(sent.slice(0, 3));
    reader.stop();
    await pubsub.close();
  });

  it("drops messages older than the retention", async () => {
    const pubsub = new MemoryPubSub({ retentionMs: 50, dedupeWindowMs: 50 });
    const first = await join(pubsub, "q", "aging");
    first.stop();
    await publishAll(pubsub, "q", ["old"]);
    await sleep(100);
    await publishAll(pubsub, "q", ["fresh"]);
    const second = await join(pubsub, "q", "aging");
    await eventually(() => second.got.length === 1, "the fresh message");
    await sleep(100);
    expect(ids(second)).toEqual(["fresh"]);
    await pubsub.close();
  });
});

describe("pub/sub on JetStream across processes", () => {
  const opened: NatsConnection[] = [];
  const open = async (namespace: string, url = NATS_URL, requestTimeoutMs?: number) => {
    const nc = await connect({ servers: url, maxReconnectAttempts: -1, reconnectTimeWait: 200 });
    opened.push(nc);
    const pubsub = new JetStreamPubSub(nc, {
      namespace,
      auth,
      log: quiet,
      ...windows,
      requestTimeoutMs,
    });
    streams.push({ nc, stream: pubsub.stream });
    return { nc, pubsub };
  };
  afterEach(async () => {
    for (const nc of opened.splice(0)) await nc.close();
  });

  it("shares one group between two processes, each message exactly once", async () => {
    const namespace = freshSchema("ps");
    const a = await open(namespace);
    const b = await open(namespace);
    const members = [
      await join(a.pubsub, "orders.>", "shipping", 3),
      await join(a.pubsub, "orders.>", "shipping", 3),
      await join(b.pubsub, "orders.>", "shipping", 3),
      await join(b.pubsub, "orders.>", "shipping", 3),
    ];
    const sent = range("o", 100);
    for (const [i, id] of sent.entries()) {
      const via = i % 2 === 0 ? a.pubsub : b.pubsub;
      await via.publish({ id, subject: `orders.${i % 3}`, data: encoder.encode(id) });
    }
    await eventually(() => ids(...members).length >= sent.length, "all messages");
    await sleep(500);
    expect(ids(...members)).toEqual([...sent].sort());
    expect(ids(...members.slice(0, 2)).length).toBeGreaterThan(0);
    expect(ids(...members.slice(2)).length).toBeGreaterThan(0);
    await a.pubsub.close();
    await b.pubsub.close();
  });

  it("leaves no consumer behind when a private subscription ends", async () => {
    const { nc, pubsub } = await open(freshSchema("ps"));
    const jsm = await jetstreamManager(nc);
    const count = async () => {
      let n = 0;
      for await (const _ of jsm.consumers.list(pubsub.stream)) n++;
      return n;
    };
    const group = await join(pubsub, "x", "durable_one");
    const byReturn = await pubsub.subscribe("x", "", new AbortController().signal);
    const bySignal = await join(pubsub, "x", "");
    expect(await count()).toBe(3);
    await byReturn[Symbol.asyncIterator]().return?.();
    bySignal.stop();
    await bySignal.done;
    expect(await count()).toBe(1);
    group.stop();
    await group.done;
    expect(await count()).toBe(1);
    await pubsub.close();
  });

  it("bounds the stream in bytes, and a process with another bound updates it", async () => {
    const namespace = freshSchema("ps");
    const { nc, pubsub } = await open(namespace);
    await publishAll(pubsub, "b", ["b1"]);
    const jsm = await jetstreamManager(nc);
    const maxBytes = async () => (await jsm.streams.info(pubsub.stream)).config.max_bytes;
    expect(await maxBytes()).toBe(DEFAULT_PUBSUB_STREAM_MAX_BYTES);
    const other = new JetStreamPubSub(nc, {
      namespace,
      auth,
      log: quiet,
      ...windows,
      maxBytes: 16 * 1024 * 1024,
    });
    await publishAll(other, "b", ["b2"]);
    expect(await maxBytes()).toBe(16 * 1024 * 1024);
    await other.close();
    await pubsub.close();
  });

  it("answers RESOURCE_EXHAUSTED, naming the setting, when NATS cannot reserve the stream's bound", async () => {
    const { nc } = await open(freshSchema("ps"));
    // More than any disk: JetStream refuses to reserve it, and makes no stream.
    const pubsub = new JetStreamPubSub(nc, {
      namespace: freshSchema("ps"),
      auth,
      log: quiet,
      ...windows,
      maxBytes: 2 ** 52,
    });
    const refused = pubsub.publish({ id: "r1", subject: "r", data: encoder.encode("r") });
    await expect(refused).rejects.toMatchObject({ kind: "limit_reached" });
    await expect(refused).rejects.toThrow(/ORISUN_PUBSUB_MAX_BYTES/);
    await pubsub.close();
  });

  it("refuses a message above the NATS server's max_payload as too large", async () => {
    const { nc, pubsub } = await open(freshSchema("ps"));
    const max = nc.info?.max_payload ?? 0;
    const publish = pubsub.publish({ id: "big", subject: "big", data: new Uint8Array(max) });
    await expect(publish).rejects.toMatchObject({ kind: "too_large", field: "data" });
    await expect(publish).rejects.toThrow(/max_payload/);
    await pubsub.publish({ id: "fits", subject: "big", data: new Uint8Array(max - 1024) });
    await pubsub.close();
  });

  it("makes the stream again when an operator deleted it", async () => {
    const { nc, pubsub } = await open(freshSchema("ps"));
    const reader = await join(pubsub, "s", "survivors");
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(pubsub.stream);
    // Its members learn that the group is gone and may subscribe again.
    await expect(reader.done).rejects.toMatchObject({ kind: "unavailable" });
    await publishAll(pubsub, "s", ["lost"]);
    const again = await join(pubsub, "s", "survivors");
    await publishAll(pubsub, "s", ["kept"]);
    await eventually(() => again.got.length === 1, "the message after the new stream");
    expect(ids(again)).toEqual(["kept"]);
    await pubsub.close();
  });

  it("answers UNAVAILABLE while NATS is down, and recovers by itself", async () => {
    const server = await startOwnNatsServer();
    try {
      const { pubsub } = await open(freshSchema("ps"), server.url, 1_000);
      const reader = await join(pubsub, "up", "watchers");
      await publishAll(pubsub, "up", ["u1"]);
      await eventually(() => reader.got.length === 1, "the first message");
      await server.stop();
      await expect(publishAll(pubsub, "up", ["u2"])).rejects.toMatchObject({
        kind: "unavailable",
      });
      await expect(
        pubsub.subscribe("up", "others", new AbortController().signal),
      ).rejects.toMatchObject({ kind: "unavailable" });
      await server.start();
      let published = false;
      const deadline = Date.now() + 15_000;
      while (!published) {
        try {
          await publishAll(pubsub, "up", ["u3"]);
          published = true;
        } catch (error) {
          if (Date.now() > deadline) throw error;
          await sleep(100);
        }
      }
      await eventually(() => reader.got.length === 2, "the message after the outage", 30_000);
      expect(ids(reader)).toEqual(["u1", "u3"]);
      await pubsub.close();
    } finally {
      await server.stop();
    }
  });
});
