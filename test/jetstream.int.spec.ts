import { randomBytes, randomUUID } from "node:crypto";
import { type JetStreamManager, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  connectNats,
  DEFAULT_LIVE_STREAM_LIMITS,
  DEFAULT_LIVE_STREAM_MAX_BYTES,
  decodeEvents,
  encodeEvents,
  ensureStream,
  streamNames,
  wireText,
} from "../server/broker/jetstream.js";
import {
  JetStreamPublisher,
  type JetStreamPublisherOptions,
  msgId,
} from "../server/broker/jetstream-publisher.js";
import { JetStreamSource, type JetStreamSourceOptions } from "../server/broker/jetstream-source.js";
import { MessageAuth } from "../server/broker/message-auth.js";
import { CALL_APPEND } from "../server/store/append-function.js";
import type { EventStore } from "../server/store/event-store.js";
import type { EventToAppend, Position, StoredEvent } from "../server/store/types.js";
import {
  dropSchema,
  freshSchema,
  openPostgresStore,
  PG_URL,
  TEST_DATABASE,
  untilListening,
  withPostgres,
} from "./support/databases.js";

/** The publisher and the source against real PostgreSQL and NATS JetStream servers. */

const NATS_URL = process.env.ORISUN_TEST_NATS_URL ?? "nats://127.0.0.1:4222";
const quiet = { info: () => {}, warn: () => {}, error: () => {} };
const B = "orders";
/** The key a deployment would keep in its database; here one for the whole file. */
const auth = new MessageAuth(randomBytes(32));

let nc: NatsConnection;
let jsm: JetStreamManager;
const namespaces: string[] = [];
/** Closed in afterEach, last opened first. */
let cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  nc = await connectNats(NATS_URL, quiet);
  jsm = await jetstreamManager(nc);
});

afterEach(async () => {
  const pending = cleanups.reverse();
  cleanups = [];
  for (const cleanup of pending) await cleanup().catch(() => {});
});

afterAll(async () => {
  for (const ns of namespaces) {
    const prefix = streamNames(ns, B).stream.slice(0, -B.length);
    for await (const name of jsm.streams.names()) {
      if (name.startsWith(prefix)) await jsm.streams.delete(name).catch(() => {});
    }
    await dropSchema(ns);
  }
  await nc.close();
});

function freshNamespace(): string {
  const ns = freshSchema("js");
  namespaces.push(ns);
  return ns;
}

async function openStore(schema: string): Promise<EventStore> {
  const store = await openPostgresStore(schema, 4);
  cleanups.push(() => store.close());
  return store;
}

async function startPublisher(
  store: EventStore,
  namespace: string,
  options: Partial<JetStreamPublisherOptions> = {},
): Promise<JetStreamPublisher> {
  const publisher = new JetStreamPublisher({ store, nc, namespace, auth, log: quiet, ...options });
  await publisher.start();
  cleanups.push(() => publisher.close());
  return publisher;
}

let counter = 0;
function events(n: number, type = "Happened"): EventToAppend[] {
  return Array.from({ length: n }, () => {
    counter++;
    return {
      id: randomUUID(),
      type,
      tags: [
        { key: "n", value: String(counter) },
        { key: "course", value: "c\u00e9" },
      ],
      data: JSON.stringify({ n: counter, text: "h\u00e9llo \u{1f600}" }),
      metadata: counter % 2 ? "" : JSON.stringify({ by: "test" }),
    };
  });
}

const append = (store: EventStore, n: number) => store.append({ boundary: B, events: events(n) });

async function eventually(check: () => Promise<boolean> | boolean, what: string, ms = 15_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** One event of the stream, with the sequence and msg id of the message that holds it. */
interface StreamEntry {
  readonly seq: number;
  readonly msgId: string | undefined;
  readonly event: StoredEvent;
  /** The last event of its message. */
  readonly closing: boolean;
}

async function streamContents(namespace: string): Promise<StreamEntry[]> {
  const { stream } = streamNames(namespace, B);
  const { state } = await jsm.streams.info(stream);
  const out: StreamEntry[] = [];
  for (let seq = state.first_seq; seq <= state.last_seq && state.messages > 0; seq++) {
    const m = await jsm.streams.getMessage(stream, { seq });
    if (!m) continue;
    const events = decodeEvents(m.data);
    events.forEach((event, i) => {
      const closing = i === events.length - 1;
      out.push({ seq, msgId: m.header.get("Nats-Msg-Id"), event, closing });
    });
  }
  return out;
}

async function lastInStream(namespace: string): Promise<Position | undefined> {
  const { stream } = streamNames(namespace, B);
  const info = await jsm.streams.info(stream).catch(() => undefined);
  if (!info || info.state.messages === 0) return undefined;
  const m = await jsm.streams.getMessage(stream, { seq: info.state.last_seq });
  return m ? decodeEvents(m.data).at(-1)?.position : undefined;
}

const samePosition = (a: Position | undefined, b: Position) =>
  a !== undefined && a.commit === b.commit && a.prepare === b.prepare;

/**
 * Resolves once a publisher is live on the boundary: appends a probe until one shows up in the
 * stream (a probe committed before the publisher read the head counts as history, not as new).
 */
async function untilLive(store: EventStore, namespace: string): Promise<Position> {
  for (let i = 0; i < 40; i++) {
    const probe = await append(store, 1);
    const deadline = Date.now() + 500;
    while (Date.now() < deadline) {
      if (samePosition(await lastInStream(namespace), probe)) return probe;
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  throw new Error("no publisher went live");
}

async function untilPublished(store: EventStore, namespace: string, ms = 15_000) {
  const head = await store.head(B);
  await eventually(async () => samePosition(await lastInStream(namespace), head), "head", ms);
}

async function log(store: EventStore): Promise<StoredEvent[]> {
  return store.read({ boundary: B, query: [], count: 100_000, direction: "asc" });
}

/**
 * The stream holds the store's log from `from` to the end, each event once, in order, in messages
 * with consecutive stream sequences, each with its last event's position as Nats-Msg-Id. Returns
 * the stream's entries from `from` on: what came before it (an earlier probe of untilLive that was
 * published late) is checked for order, not counted.
 */
async function expectStreamMirrorsLog(store: EventStore, namespace: string, from: Position) {
  const entries = await streamContents(namespace);
  const all = await log(store);
  const start = all.findIndex((e) => samePosition(e.position, from));
  expect(start).toBeGreaterThanOrEqual(0);
  const expected = all.slice(start);
  const fromIndex = entries.findIndex((e) => samePosition(e.event.position, from));
  expect(fromIndex).toBeGreaterThanOrEqual(0);
  const tail = entries.slice(fromIndex);
  expect(tail.map((e) => e.event)).toEqual(expected);
  // Nothing before `from` either repeats a later event or breaks the order.
  const positions = entries.map((e) => e.event.position);
  for (let i = 1; i < positions.length; i++) {
    const [a, b] = [positions[i - 1], positions[i]];
    expect(
      a && b && (a.commit < b.commit || (a.commit === b.commit && a.prepare < b.prepare)),
    ).toBe(true);
  }
  for (let i = 1; i < entries.length; i++) {
    const [a, b] = [entries[i - 1], entries[i]];
    expect(b?.seq).toBe((a?.seq ?? 0) + (a?.closing ? 1 : 0));
  }
  for (const e of entries.filter((e) => e.closing)) {
    expect(e.msgId).toBe(auth.messageId(msgId(e.event.position)));
  }
  return tail;
}

describe("the codec", () => {
  it("round-trips an event, positions beyond 2^53 included", () => {
    const event: StoredEvent = {
      boundary: B,
      id: "e-1",
      type: "T",
      tags: [
        { key: "k", value: "v" },
        { key: "k", value: "w\u00e9" },
      ],
      data: '{"a": [1, 2]}',
      metadata: "",
      position: { commit: 2n ** 62n, prepare: 2n ** 62n + 7n },
      createdAt: new Date("2024-01-02T03:04:05.678Z"),
    };
    const next = { ...event, id: "e-2", position: { ...event.position, prepare: 2n ** 62n + 8n } };
    expect(decodeEvents(encodeEvents([wireText(event)]))).toEqual([event]);
    expect(decodeEvents(encodeEvents([wireText(event), wireText(next)]))).toEqual([event, next]);
    // What versions before message batching published: one bare event per message.
    expect(decodeEvents(new TextEncoder().encode(wireText(event)))).toEqual([event]);
  });

  it("refuses what it did not encode", () => {
    const bytes = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
    expect(() => decodeEvents(bytes({ hello: 1 }))).toThrow();
    expect(() => decodeEvents(bytes(null))).toThrow();
    expect(() => decodeEvents(bytes([]))).toThrow(/empty/);
    expect(() => decodeEvents(bytes([{ hello: 1 }]))).toThrow();
    expect(() => decodeEvents(new TextEncoder().encode("not json"))).toThrow();
  });

  it("names one stream per namespace and boundary", () => {
    expect(streamNames("t_1.x-y", "orders")).toEqual({
      stream: "ORISUN_EVENTS_t_1_x_y_orders",
      subject: "orisun.events.t_1_x_y.orders",
    });
    expect(() => streamNames("public", "Orders")).toThrow();
  });
});

describe("the stream", () => {
  it("is created idempotently by concurrent creators and brought to the current config", async () => {
    const ns = freshNamespace();
    const other = await connectNats(NATS_URL, quiet);
    cleanups.push(() => other.close());
    const otherJsm = await jetstreamManager(other);
    const infos = await Promise.all([
      ensureStream(jsm, ns, B),
      ensureStream(otherJsm, ns, B),
      ensureStream(jsm, ns, B),
      ensureStream(otherJsm, ns, B),
    ]);
    expect(new Set(infos.map((i) => i.config.name)).size).toBe(1);
    const { stream } = streamNames(ns, B);
    // No bound in bytes unless asked: JetStream would reserve it on its disk for every boundary.
    expect(DEFAULT_LIVE_STREAM_MAX_BYTES).toBe(0);
    expect(infos[0]?.config.max_bytes).toBe(-1);
    expect(infos[0]?.config.max_age).toBe(600_000_000_000);
    await jsm.streams.update(stream, { max_age: 7_200_000_000_000, max_bytes: 1_000_000_000 });
    const updated = await ensureStream(jsm, ns, B);
    expect(updated.config.max_age).toBe(600_000_000_000);
    expect(updated.config.max_bytes).toBe(-1);
    const bounded = await ensureStream(jsm, ns, B, { maxBytes: 64 * 1024, maxAgeMs: 5 * 60_000 });
    expect([bounded.config.max_bytes, bounded.config.max_age]).toEqual([
      64 * 1024,
      300_000_000_000,
    ]);
    expect(updated.config.duplicate_window).toBe(120_000_000_000);
    expect(updated.config.storage).toBe("file");
  });
});

describe("JetStreamPublisher", () => {
  it("publishes new events in position order, each message with its last position as msg id", async () => {
    const ns = freshNamespace();
    const store = await openStore(ns);
    await append(store, 3); // history: served by the store, not the stream
    const publisher = await startPublisher(store, ns);
    const live = await untilLive(store, ns);
    expect(publisher.publishing.has(B)).toBe(true);
    await append(store, 1);
    await append(store, 5);
    await Promise.all(Array.from({ length: 20 }, (_, i) => append(store, 1 + (i % 3))));
    await append(store, 2_500); // more than a page and many windows
    await untilPublished(store, ns);
    const entries = await expectStreamMirrorsLog(store, ns, live);
    expect(entries.length).toBe(1 + 1 + 5 + 39 + 2_500);
  });

  it("puts the events of one append into one message, in order", async () => {
    const ns = freshNamespace();
    const store = await openStore(ns);
    await startPublisher(store, ns);
    const live = await untilLive(store, ns);
    const before = (await jsm.streams.info(streamNames(ns, B).stream)).state.messages;
    await append(store, 100);
    await untilPublished(store, ns);
    const after = (await jsm.streams.info(streamNames(ns, B).stream)).state.messages;
    expect(after - before).toBe(1);
    const entries = await expectStreamMirrorsLog(store, ns, live);
    expect(entries.length).toBe(1 + 100);
  });

  it("with lingerMs, commits that come sooner than it after a message go out together", async () => {
    const ns = freshNamespace();
    const store = await openStore(ns);
    const publisher = await startPublisher(store, ns, { lingerMs: 2_000 });
    const live = await untilLive(store, ns);
    // Quiet for longer than the linger: the next commit goes out at once.
    await new Promise((r) => setTimeout(r, 2_100));
    const before = { ...publisher.counts };
    const started = performance.now();
    await append(store, 1);
    await untilPublished(store, ns);
    expect(performance.now() - started).toBeLessThan(1_500);
    // Sequential commits within the linger share messages.
    for (let i = 0; i < 20; i++) await append(store, 1);
    await untilPublished(store, ns);
    const messages = publisher.counts.messages - before.messages;
    expect(messages).toBeGreaterThanOrEqual(2);
    expect(messages).toBeLessThanOrEqual(4);
    expect((await expectStreamMirrorsLog(store, ns, live)).length).toBe(1 + 21);
  });

  it("after a restart publishes what was committed meanwhile, nothing twice", async () => {
    const ns = freshNamespace();
    const store = await openStore(ns);
    const first = await startPublisher(store, ns);
    const live = await untilLive(store, ns);
    for (let i = 0; i < 10; i++) await append(store, 5);
    await untilPublished(store, ns);
    await first.close();
    expect(first.publishing.size).toBe(0);
    for (let i = 0; i < 10; i++) await append(store, 3);
    await startPublisher(store, ns);
    await append(store, 2);
    await untilPublished(store, ns);
    const entries = await expectStreamMirrorsLog(store, ns, live);
    expect(entries.length).toBe(1 + 50 + 30 + 2);
  });

  it("runs on one of two processes and moves to the other when its holder goes", async () => {
    const ns = freshNamespace();
    const a = await openStore(ns);
    const b = await openStore(ns);
    await append(a, 1);
    const pa = await startPublisher(a, ns);
    const pb = await startPublisher(b, ns);
    const live = await untilLive(a, ns);
    const holders = () => [pa, pb].filter((p) => p.publishing.has(B));
    for (let i = 0; i < 20; i++) {
      await append(i % 2 ? a : b, 2);
      expect(holders().length).toBe(1);
    }
    await untilPublished(a, ns);

    // The holder closes: the other takes over, from where the stream ends.
    const [holder] = holders();
    const [standby, standbyStore] = holder === pa ? [pb, b] : [pa, a];
    await holder?.close();
    const closedAt = Date.now();
    await append(standbyStore, 4);
    await untilPublished(standbyStore, ns, 10_000);
    expect(Date.now() - closedAt).toBeLessThan(10_000);
    expect(holders()).toEqual([standby]);

    // A new standby on the first store; then the holder's whole store closes (a dying process
    // frees its session lock the same way).
    const holderStore = standbyStore;
    const next = await startPublisher(holderStore === a ? b : a, ns);
    const nextStore = holderStore === a ? b : a;
    await append(holderStore, 3);
    await holderStore.close();
    const goneAt = Date.now();
    await append(nextStore, 5);
    await untilPublished(nextStore, ns, 10_000);
    expect(Date.now() - goneAt).toBeLessThan(10_000);
    expect(next.publishing.has(B)).toBe(true);
    expect(standby.publishing.has(B)).toBe(false);

    const entries = await expectStreamMirrorsLog(nextStore, ns, live);
    expect(entries.length).toBe(1 + 40 + 4 + 3 + 5);
  });

  it("leaves out an event larger than NATS max_payload and carries on", async () => {
    const ns = freshNamespace();
    const store = await openStore(ns);
    await startPublisher(store, ns);
    const live = await untilLive(store, ns);
    const big = { ...events(1)[0], data: JSON.stringify("x".repeat(1_100_000)) } as EventToAppend;
    const bigAt = await store.append({ boundary: B, events: [big] });
    await append(store, 2);
    await untilPublished(store, ns);
    const all = await streamContents(ns);
    expect(all.map((e) => e.event.position)).not.toContainEqual(bigAt);
    const entries = all.slice(all.findIndex((e) => samePosition(e.event.position, live)));
    expect(entries[0]?.event.position).toEqual(live);
    expect(entries.length).toBe(1 + 2);
  });
});

describe("JetStreamSource", () => {
  async function collect(source: JetStreamSource) {
    const got: StoredEvent[] = [];
    const broken: Error[] = [];
    const following = await source.follow(
      B,
      (e) => got.push(e),
      (e) => broken.push(e),
    );
    return { got, broken, following };
  }

  /** A source on the namespace, closed after the test. */
  function newSource(ns: string, options: Partial<JetStreamSourceOptions> = {}): JetStreamSource {
    const source = new JetStreamSource({ nc, namespace: ns, auth, log: quiet, ...options });
    cleanups.push(() => source.close());
    return source;
  }

  const consumers = async (ns: string) => {
    const list: string[] = [];
    for await (const c of jsm.consumers.list(streamNames(ns, B).stream)) list.push(c.name);
    return list;
  };

  it("delivers the published events in order, and stop() deletes its consumer", async () => {
    const ns = freshNamespace();
    const store = await openStore(ns);
    await startPublisher(store, ns);
    const live = await untilLive(store, ns);
    const source = newSource(ns);
    const one = await collect(source);
    const two = await collect(source);
    expect(await consumers(ns)).toHaveLength(2);
    for (let i = 0; i < 10; i++) await append(store, 1 + i);
    await Promise.all(Array.from({ length: 10 }, () => append(store, 3)));
    await untilPublished(store, ns);
    const expected = (await log(store)).filter((e) => e.position.prepare > live.prepare);
    await eventually(() => one.got.length >= expected.length, "delivery");
    expect(one.got).toEqual(expected);
    await eventually(() => two.got.length >= expected.length, "delivery");
    expect(two.got).toEqual(expected);

    await one.following.stop();
    expect(await consumers(ns)).toHaveLength(1);
    await source.close();
    expect(await consumers(ns)).toHaveLength(0);
    expect([...one.broken, ...two.broken]).toEqual([]);
  });

  it("sees what is published right after follow() resolves, nothing from before", async () => {
    const ns = freshNamespace();
    await ensureStream(jsm, ns, B);
    const js = jsm.jetstream();
    const { subject } = streamNames(ns, B);
    const source = newSource(ns);
    let prepare = 0n;
    const publish = () => {
      prepare++;
      const event: StoredEvent = {
        boundary: B,
        id: `e${prepare}`,
        type: "T",
        tags: [],
        data: "{}",
        metadata: "",
        position: { commit: prepare, prepare },
        createdAt: new Date(),
      };
      const payload = encodeEvents([wireText(event)]);
      const id = msgId(event.position);
      return js.publish(subject, payload, {
        msgID: id,
        headers: auth.headers(subject, id, payload),
      });
    };
    for (let round = 0; round < 20; round++) {
      await publish();
      const { got, following } = await collect(source);
      await publish();
      await eventually(() => got.length > 0, "the event published after follow()", 5_000);
      await new Promise((r) => setTimeout(r, 20));
      expect(got.map((e) => e.position.prepare)).toEqual([prepare]);
      await following.stop();
    }
    expect(await consumers(ns)).toHaveLength(0);
  });

  it("recreates a consumer lost on the server where it left off, without replaying", async () => {
    const ns = freshNamespace();
    const store = await openStore(ns);
    await startPublisher(store, ns);
    const live = await untilLive(store, ns);
    const source = newSource(ns, { pullExpiresMs: 2_000 });
    const { got, broken, following } = await collect(source);
    await append(store, 5);
    await eventually(() => got.length === 5, "the first five");
    const [lost] = await consumers(ns);
    await jsm.consumers.delete(streamNames(ns, B).stream, lost ?? "");
    await eventually(async () => (await consumers(ns)).length === 1, "a new consumer", 15_000);
    await append(store, 3);
    await eventually(() => got.length >= 8, "the next three");
    await new Promise((r) => setTimeout(r, 100));
    const expected = (await log(store)).filter((e) => e.position.prepare > live.prepare);
    expect(got).toEqual(expected);
    expect(broken).toEqual([]);
    await following.stop();
    expect(await consumers(ns)).toHaveLength(0);
  });

  it("with the stream bounded in bytes, keeps publishing and following while the oldest messages go", async () => {
    const ns = freshNamespace();
    const store = await openStore(ns);
    const maxStreamBytes = 64 * 1024;
    const streamLimits = { ...DEFAULT_LIVE_STREAM_LIMITS, maxBytes: maxStreamBytes };
    await startPublisher(store, ns, { streamLimits });
    const live = await untilLive(store, ns);
    const source = newSource(ns, { pullExpiresMs: 2_000, streamLimits });
    const { got, broken } = await collect(source);
    await append(store, 5);
    await eventually(() => got.length === 5, "the first five");
    // The consumer is lost, and while it is recreated the stream drops what it had not read.
    const [lost] = await consumers(ns);
    await jsm.consumers.delete(streamNames(ns, B).stream, lost ?? "");
    for (let i = 0; i < 60; i++) {
      const padded = events(1 + (i % 3)).map((e) => ({
        ...e,
        data: `{"pad":"${"x".repeat(4_000)}"}`,
      }));
      await store.append({ boundary: B, events: padded }); // about 500 KB in all
    }
    await untilPublished(store, ns);
    const { state, config } = await jsm.streams.info(streamNames(ns, B).stream);
    expect(config.max_bytes).toBe(maxStreamBytes);
    expect(state.bytes).toBeLessThanOrEqual(maxStreamBytes);
    expect(state.first_seq).toBeGreaterThan(2);
    await eventually(async () => (await consumers(ns)).length === 1, "a new consumer", 15_000);
    await append(store, 3);
    const head = await store.head(B);
    await eventually(() => samePosition(got.at(-1)?.position, head), "the head", 15_000);
    // In order, nothing twice, through the head; what the stream dropped before the consumer came
    // back is a jump, which the feed above the source reads from the store.
    const all = (await log(store)).filter((e) => e.position.prepare > live.prepare);
    const index = new Map(all.map((e, i) => [e.position.prepare, i]));
    const at = got.map((e) => index.get(e.position.prepare) ?? -1);
    expect(at.every((i, k) => i >= 0 && (k === 0 || i > (at[k - 1] ?? -1)))).toBe(true);
    expect(got.map((e) => all[index.get(e.position.prepare) ?? -1])).toEqual(got);
    expect(got.slice(0, 5)).toEqual(all.slice(0, 5));
    expect(broken).toEqual([]);
  });

  it("reports a broken follow when the stream is deleted", async () => {
    const ns = freshNamespace();
    await ensureStream(jsm, ns, B);
    const source = newSource(ns, { pullExpiresMs: 2_000 });
    const { broken } = await collect(source);
    await jsm.streams.delete(streamNames(ns, B).stream);
    await eventually(() => broken.length > 0, "onBroken", 15_000);
  });
});

/** Every message's payload is byte for byte what the log's events at its positions encode to. */
async function expectPayloadsFromLog(store: EventStore, namespace: string) {
  const { stream } = streamNames(namespace, B);
  const { state } = await jsm.streams.info(stream);
  const byPrepare = new Map((await log(store)).map((e) => [e.position.prepare, e]));
  let messages = 0;
  for (let seq = state.first_seq; seq <= state.last_seq; seq++) {
    const m = await jsm.streams.getMessage(stream, { seq });
    if (!m) continue;
    const texts = decodeEvents(m.data).map((e) => {
      const stored = byPrepare.get(e.position.prepare);
      expect(stored, `event ${msgId(e.position)} is in the log`).toBeDefined();
      return wireText(stored as StoredEvent);
    });
    expect(Buffer.from(m.data).equals(Buffer.from(encodeEvents(texts)))).toBe(true);
    messages++;
  }
  return messages;
}

describe("JetStreamPublisher from memory", () => {
  it("publishes its own commits as the appends handed them over, without reading them back", async () => {
    const ns = freshNamespace();
    const store = await openStore(ns);
    await untilListening(store);
    const publisher = await startPublisher(store, ns);
    const live = await untilLive(store, ns);
    const before = { ...publisher.counts };
    expect(before.readBacks).toBeGreaterThan(0); // the start of its turn
    for (let i = 0; i < 30; i++) await append(store, 1);
    await Promise.all(Array.from({ length: 20 }, (_, i) => append(store, 1 + (i % 3))));
    await append(store, 2_500); // more than a page
    await untilPublished(store, ns);
    const entries = await expectStreamMirrorsLog(store, ns, live);
    expect(entries.length).toBe(1 + 30 + 39 + 2_500);
    expect(await expectPayloadsFromLog(store, ns)).toBeGreaterThan(0);
    expect(publisher.counts.readBacks - before.readBacks).toBe(0);
    expect(publisher.counts.fromMemory - before.fromMemory).toBe(30 + 39 + 2_500);
    expect(publisher.handedOverBytes).toBe(0);
  });

  it("reads back what does not fit its buffer and still publishes every event once, in order", async () => {
    const ns = freshNamespace();
    const store = await openStore(ns);
    // Room for about two of these events at a time.
    const publisher = await startPublisher(store, ns, { handOverBytes: 1_000 });
    const live = await untilLive(store, ns);
    const before = { ...publisher.counts };
    await Promise.all(Array.from({ length: 40 }, (_, i) => append(store, 1 + (i % 4))));
    for (let i = 0; i < 10; i++) await append(store, 1);
    await append(store, 50);
    await untilPublished(store, ns);
    const entries = await expectStreamMirrorsLog(store, ns, live);
    expect(entries.length).toBe(1 + 100 + 10 + 50);
    await expectPayloadsFromLog(store, ns);
    expect(publisher.counts.readBacks).toBeGreaterThan(before.readBacks);
    expect(publisher.handedOverBytes).toBe(0);
  });

  it("with no buffer at all, reads everything back", async () => {
    const ns = freshNamespace();
    const store = await openStore(ns);
    const publisher = await startPublisher(store, ns, { handOverBytes: 0 });
    const live = await untilLive(store, ns);
    for (let i = 0; i < 10; i++) await append(store, 2);
    await untilPublished(store, ns);
    expect((await expectStreamMirrorsLog(store, ns, live)).length).toBe(1 + 20);
    expect(publisher.counts.fromMemory).toBe(0);
  });

  it("a process that defers a boundary leaves its publisher lock to the one meant to publish it, takes it while that one is away, and hands it back", async () => {
    const ns = freshNamespace();
    const a = await openStore(ns);
    const b = await openStore(ns);
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
    let ownerUp = true;
    // a commits while nobody else publishes: without deferring, it takes the lock at once.
    const pa = await startPublisher(a, ns, {
      defer: (boundary) => boundary === B && ownerUp,
      lockRetryMs: 1_500,
    });
    await append(a, 1);
    await sleep(1_000);
    expect(pa.publishing.has(B)).toBe(false);
    // The process meant to publish it comes up and hears of the next commit.
    const pb = await startPublisher(b, ns, { lockRetryMs: 200 });
    await append(a, 1);
    await eventually(() => pb.publishing.has(B), "the other process to publish the boundary");
    expect(pa.publishing.has(B)).toBe(false);
    const live = await untilLive(a, ns);

    // That process goes: the deferring one takes over from where the stream ends, and keeps it.
    ownerUp = false;
    await pb.close();
    await append(a, 2);
    await eventually(() => pa.publishing.has(B), "the deferring process to take over");
    await untilPublished(a, ns);
    await sleep(500);
    expect(pa.publishing.has(B)).toBe(true);

    // It is back and commits: once all there is is published, the boundary goes back to it.
    const back = await startPublisher(b, ns, { lockRetryMs: 200 });
    ownerUp = true;
    await append(b, 1);
    await eventually(() => back.publishing.has(B), "the boundary to go back");
    expect(pa.publishing.has(B)).toBe(false);
    await append(b, 2);
    await untilPublished(a, ns);
    expect((await expectStreamMirrorsLog(a, ns, live)).length).toBe(1 + 2 + 1 + 2);
  });

  it("two writing processes: the holder reads back only the other's commits", async () => {
    const ns = freshNamespace();
    const a = await openStore(ns);
    const b = await openStore(ns);
    const pa = await startPublisher(a, ns);
    const pb = await startPublisher(b, ns);
    const live = await untilLive(a, ns);
    await Promise.all(
      Array.from({ length: 60 }, (_, i) => append(i % 3 === 0 ? b : a, 1 + (i % 2))),
    );
    await untilPublished(a, ns);
    const entries = await expectStreamMirrorsLog(a, ns, live);
    expect(entries.length).toBe(1 + 90);
    await expectPayloadsFromLog(a, ns);
    const holder = [pa, pb].find((p) => p.publishing.has(B));
    expect(holder).toBeDefined();
    // Its own commits that follow what it published go from memory. Within the burst that is a
    // matter of timing: with one round trip per append, every commit can land before the
    // holder's first read back, which then publishes them all (seen in 2 of 5 runs).
    const own = holder === pa ? a : b;
    for (let i = 0; i < 3; i++) {
      await append(own, 1);
      await untilPublished(a, ns);
    }
    expect(holder?.counts.fromMemory).toBeGreaterThan(0);
    expect((await expectStreamMirrorsLog(a, ns, live)).length).toBe(1 + 93);
  });
});

describe("quiet commits: no NOTIFY for what the committing process publishes itself", () => {
  /**
   * The payloads of NOTIFY orisun_commits for the schema, as they arrive, and empty ones (what
   * pg_notify sends for a NULL payload: a function that called it regardless would show so).
   */
  async function listen(schema: string): Promise<string[]> {
    const client = new pg.Client({ connectionString: PG_URL });
    await client.connect();
    cleanups.push(() => client.end());
    const heard: string[] = [];
    client.on("notification", (n) => {
      const payload = n.payload ?? "";
      if (payload === "" || payload.startsWith(`${schema}/`)) heard.push(payload);
    });
    await client.query("LISTEN orisun_commits");
    return heard;
  }

  /** The payload a store's commits carry: its first commit notifies, no publisher running yet. */
  async function payloadOf(store: EventStore, heard: string[]): Promise<string> {
    const before = heard.length;
    await append(store, 1);
    await eventually(() => heard.length > before, "the NOTIFY of a commit");
    return heard.at(-1) as string;
  }

  /** Two processes of one deployment, a listener on its commits, and each one's payload. */
  async function twoProcesses() {
    const ns = freshNamespace();
    const heard = await listen(ns);
    const a = await openStore(ns);
    const b = await openStore(ns);
    const fromA = await payloadOf(a, heard);
    const fromB = await payloadOf(b, heard);
    expect(fromA).not.toBe(fromB);
    return { ns, heard, a, b, fromA, fromB };
  }

  /** Ends the database session that holds the store's publisher lock on B. */
  function terminateLockSession(store: EventStore) {
    return withPostgres(TEST_DATABASE, (client) =>
      client.query(
        `SELECT pg_terminate_backend(l.pid) FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
           AND ((l.classid::int8 << 32) | l.objid::int8) = hashtextextended($1, 0)`,
        [`${store.locks.keyText("orisun-publisher:")}${B}`],
      ),
    );
  }

  it("the holder's own commits go without NOTIFY, another process's with it, and the holder notifies when it loses the lock", async () => {
    const { ns, heard, a, b, fromA, fromB } = await twoProcesses();
    const pa = await startPublisher(a, ns, { lockRetryMs: 100 });
    const live = await untilLive(a, ns);
    expect(pa.publishing.has(B)).toBe(true);

    heard.length = 0;
    for (let i = 0; i < 5; i++) await append(a, 1 + (i % 2));
    // NOTIFYs arrive in commit order: once b's is here, any of a's before it would be too.
    await append(b, 1);
    await eventually(() => heard.includes(fromB), "b's NOTIFY");
    expect(heard).toEqual([fromB]);
    await untilPublished(a, ns);

    // The holder's lock session dies: it tells whoever takes over to read the log.
    heard.length = 0;
    await append(a, 1);
    await terminateLockSession(a);
    await eventually(() => heard.includes(fromA), "a's NOTIFY after losing the lock");
    await untilPublished(a, ns);
    await eventually(() => pa.publishing.has(B), "a publishing again");
    const entries = await expectStreamMirrorsLog(a, ns, live);
    expect(entries.length).toBe(1 + 7 + 1 + 1);
  });

  it("a holder whose publishing fails notifies again until JetStream confirms it", async () => {
    const { ns, heard, a, b, fromA, fromB } = await twoProcesses();
    await startPublisher(a, ns);
    await untilLive(a, ns);
    heard.length = 0;
    // JetStream loses the stream: the next publish that asks for an ack, or the confirmation of
    // those that did not, fails.
    await jsm.streams.delete(streamNames(ns, B).stream);
    await eventually(
      async () => {
        await append(a, 1);
        return heard.includes(fromA);
      },
      "a's NOTIFY once its publishing failed",
      5_000,
    );
    // The publisher makes the stream again (new, it starts at the head) and publishes the
    // commits that follow: once JetStream confirms them, a's commits are quiet again.
    await eventually(
      async () => {
        heard.length = 0;
        for (let i = 0; i < 3; i++) await append(a, 1);
        await append(b, 1);
        await eventually(() => heard.includes(fromB), "b's NOTIFY");
        return heard.length === 1;
      },
      "a quiet again",
      10_000,
    );
    await untilPublished(a, ns);
  });

  it("a process that never writes the boundary takes it over from a dead holder at its sweep", async () => {
    const { ns, heard, a, b } = await twoProcesses();
    // The holder lingers, so its next commits wait to be published when it stops. It stops
    // without a word, as a killed process would: its closing announce never reaches anyone.
    const pa = await startPublisher(a, ns, { lingerMs: 60_000 });
    const live = await untilLive(a, ns);
    const pb = await startPublisher(b, ns, { sweepMs: 200 });
    heard.length = 0;
    for (let i = 0; i < 5; i++) await append(a, 2);
    a.announce = async () => {};
    await pa.close();
    // NOTIFYs arrive in commit order: once this one is here, any of a's before it would be too.
    const fence = `${ns}/fence/test`;
    await withPostgres(TEST_DATABASE, (client) =>
      client.query("SELECT pg_notify('orisun_commits', $1)", [fence]),
    );
    await eventually(() => heard.includes(fence), "the fence");
    expect(heard).toEqual([fence]);
    expect(samePosition(await lastInStream(ns), live)).toBe(true);
    await untilPublished(b, ns, 10_000);
    expect(pb.publishing.has(B)).toBe(true);
    expect((await expectStreamMirrorsLog(b, ns, live)).length).toBe(1 + 10);
  });

  it("a holder that stops announces its boundaries: a process that never writes one publishes what it left at once", async () => {
    const { ns, heard, a, b, fromA } = await twoProcesses();
    // The holder lingers, so its last commits are not published when it stops; the other
    // process's sweep is too slow to be what takes the boundary over.
    const pa = await startPublisher(a, ns, { lingerMs: 60_000 });
    const live = await untilLive(a, ns);
    const pb = await startPublisher(b, ns, { sweepMs: 600_000 });
    heard.length = 0;
    for (let i = 0; i < 5; i++) await append(a, 2);
    // Quiet: NOTIFYs arrive in commit order, so once this one is here any of a's would be too.
    const fence = `${ns}/fence/test`;
    await withPostgres(TEST_DATABASE, (client) =>
      client.query("SELECT pg_notify('orisun_commits', $1)", [fence]),
    );
    await eventually(() => heard.includes(fence), "the fence");
    expect(heard).toEqual([fence]);
    await pa.close();
    await eventually(() => heard.includes(fromA), "a's NOTIFY on closing");
    await untilPublished(b, ns, 5_000);
    expect(pb.publishing.has(B)).toBe(true);
    expect((await expectStreamMirrorsLog(b, ns, live)).length).toBe(1 + 10);
  });

  it("a commit made quietly by a process that lost the boundary before it committed is notified after it", async () => {
    const { heard, a, b, fromA, fromB } = await twoProcesses();

    // Published here throughout: no NOTIFY.
    const unquiet = a.commitQuietly(() => true);
    heard.length = 0;
    await append(a, 1);
    await append(b, 1);
    await eventually(() => heard.includes(fromB), "b's NOTIFY");
    expect(heard).toEqual([fromB]);
    unquiet();

    // Published here when the statement was sent, no longer once it committed: notified after.
    let asked = 0;
    a.commitQuietly(() => asked++ === 0);
    heard.length = 0;
    await append(a, 1);
    await eventually(() => heard.includes(fromA), "a's late NOTIFY");
    expect(asked).toBe(2);
  });

  it("a holder busy in a read lets the boundary go the moment its lock is lost: its next commit is heard", async () => {
    const { ns, heard, a, b, fromA } = await twoProcesses();
    const pa = await startPublisher(a, ns, { lockRetryMs: 60_000 });
    await untilLive(a, ns);
    await untilPublished(a, ns);
    // The holder's next read of the log does not come back until released.
    const read = a.read.bind(a);
    let release = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    cleanups.push(async () => release());
    let reading = false;
    a.read = async (...args: Parameters<EventStore["read"]>) => {
      if (!reading) {
        reading = true;
        await held;
      }
      return read(...args);
    };
    // Another process's commit sends it to the log.
    await append(b, 1);
    await eventually(() => reading, "the holder's read", 5_000);
    await terminateLockSession(a);
    await eventually(() => !pa.publishing.has(B), "a letting the boundary go", 3_000);
    heard.length = 0;
    await append(a, 1);
    await eventually(() => heard.includes(fromA), "a's NOTIFY", 3_000);
    release();
  });

  it("a quiet commit whose answer was lost is published at once, and other processes hear of it", async () => {
    const { ns, heard, a, fromA } = await twoProcesses();
    // Idle waits far longer than the test: only a wake can publish the commit in time.
    const pa = await startPublisher(a, ns, { idleMs: 120_000, sweepMs: 60_000 });
    await untilLive(a, ns);
    expect(pa.publishing.has(B)).toBe(true);
    await untilPublished(a, ns);

    // PostgreSQL commits the next append statement, and its answer is lost on the way back.
    const pool = a.database.connections;
    const connect = pool.connect.bind(pool);
    let armed = true;
    pool.connect = async () => {
      const client = await connect();
      return new Proxy(client, {
        get(target, key, receiver) {
          if (key !== "query") return Reflect.get(target, key, receiver);
          return async (text: string, values: readonly unknown[]) => {
            const result = await target.query(text, values);
            if (armed && text.startsWith(CALL_APPEND)) {
              armed = false;
              throw Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" });
            }
            return result;
          };
        },
      });
    };
    heard.length = 0;
    const lost = events(1);
    await expect(a.append({ boundary: B, events: lost })).rejects.toMatchObject({
      kind: "unavailable",
    });
    expect(armed).toBe(false);
    const head = await a.head(B);
    await eventually(
      async () => samePosition(await lastInStream(ns), head),
      "the lost commit",
      5_000,
    );
    await eventually(() => heard.includes(fromA), "a's NOTIFY of it", 5_000);
    // The client's retry finds it stored: same position, nothing twice.
    expect(await a.append({ boundary: B, events: lost })).toEqual(head);
    await untilPublished(a, ns);
  });
});

describe("JetStreamPublisher acknowledgements", () => {
  /** The events of the messages this deployment signed, in stream order. */
  async function signedEvents(namespace: string): Promise<StoredEvent[]> {
    const { stream, subject } = streamNames(namespace, B);
    const { state } = await jsm.streams.info(stream);
    const out: StoredEvent[] = [];
    for (let seq = state.first_seq; seq <= state.last_seq && state.messages > 0; seq++) {
      const m = await jsm.streams.getMessage(stream, { seq });
      if (m && auth.verify({ subject, headers: m.header, data: m.data })) {
        out.push(...decodeEvents(m.data));
      }
    }
    return out;
  }

  /** An observer that keeps every position reported as published. */
  function reporting() {
    const reported: Position[] = [];
    return {
      reported,
      observer: { published: (_: string, p: Position) => reported.push(p), released() {} },
    };
  }

  it("asks for an ack for one message in 32, and reports as published only what JetStream confirmed", async () => {
    const ns = freshNamespace();
    const store = await openStore(ns);
    const { reported, observer } = reporting();
    // Long enough that neither the age of a publish nor a quiet spell asks for confirmation here.
    const publisher = await startPublisher(store, ns, { confirmMs: 60_000, observer });
    const live = await untilLive(store, ns);
    const before = { ...publisher.counts };
    for (let i = 0; i < 100; i++) await append(store, 1);
    await untilPublished(store, ns);
    // A message per commit, unless a commit came before the publisher's turn after the one before
    // (on a loaded machine, once in a while): then the two share a message.
    const messages = publisher.counts.messages - before.messages;
    expect(messages).toBeGreaterThanOrEqual(80);
    expect(messages).toBeLessThanOrEqual(100);
    const acked = publisher.counts.acked - before.acked;
    expect(acked).toBeGreaterThanOrEqual(Math.floor(messages / 32));
    expect(acked).toBeLessThanOrEqual(Math.ceil(messages / 32));
    expect(publisher.counts.confirmations).toBe(before.confirmations);
    // Unacknowledged, the last ones are not reported as published.
    const head = await store.head(B);
    expect(reported.some((p) => samePosition(p, head))).toBe(false);
    expect((await expectStreamMirrorsLog(store, ns, live)).length).toBe(1 + 100);
  });

  it("confirms what a quiet boundary published without an ack, and reports it then", async () => {
    const ns = freshNamespace();
    const store = await openStore(ns);
    const { reported, observer } = reporting();
    const publisher = await startPublisher(store, ns, { confirmMs: 100, observer });
    const live = await untilLive(store, ns);
    await eventually(() => reported.some((p) => samePosition(p, live)), "the probe confirmed");
    const before = { ...publisher.counts };
    for (let i = 0; i < 5; i++) await append(store, 1);
    const head = await store.head(B);
    await eventually(() => reported.some((p) => samePosition(p, head)), "the head reported");
    expect(publisher.counts.confirmations).toBeGreaterThan(before.confirmations);
    expect((await expectStreamMirrorsLog(store, ns, live)).length).toBe(1 + 5);
  });

  it("finds the publishes JetStream refused without a word, and publishes them again", async () => {
    const ns = freshNamespace();
    const store = await openStore(ns);
    const warnings: string[] = [];
    const logger = { ...quiet, warn: (_: object, message: string) => warnings.push(message) };
    const publisher = new JetStreamPublisher({
      store,
      nc,
      namespace: ns,
      auth,
      log: logger,
      confirmMs: 100,
    });
    await publisher.start();
    cleanups.push(() => publisher.close());
    const live = await untilLive(store, ns);
    for (let i = 0; i < 3; i++) await append(store, 1);
    await untilPublished(store, ns);
    // Somebody else's message takes the next sequence: the publisher's next messages expect
    // another one, and JetStream drops them without an answer (none was asked for).
    nc.publish(streamNames(ns, B).subject, new TextEncoder().encode("not an event"));
    await nc.flush();
    for (let i = 0; i < 5; i++) await append(store, 1);
    const head = await store.head(B);
    await eventually(
      async () => samePosition((await signedEvents(ns)).at(-1)?.position, head),
      "the head published",
    );
    expect(warnings).toContain("publishing failed; resuming from the stream's end");
    const all = await log(store);
    const from = all.findIndex((e) => samePosition(e.position, live));
    expect(await signedEvents(ns)).toEqual(all.slice(from));
    expect(all.length - from).toBe(1 + 3 + 5);
  });
});
