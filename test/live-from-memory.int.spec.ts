import { randomUUID } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { LiveFeeds } from "../server/broker/feed.js";
import type { EventStore } from "../server/store/event-store.js";
import type { EventToAppend } from "../server/store/types.js";
import {
  dropSchema,
  freshSchema,
  openPostgresStore,
  storeTargets,
  untilListening,
} from "./support/databases.js";
import { collect } from "./support/live.js";

/** The in-process feed (no NATS) delivers this process's commits as the appends hand them over. */

const quiet = { warn: () => {} };
let cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  const pending = cleanups.reverse();
  cleanups = [];
  for (const cleanup of pending) await cleanup().catch(() => {});
});

/** Counts the store reads that are not a subscription's catch-up: the feed's. */
function countFeedReads(store: EventStore): { reads: number } {
  const counted = { reads: 0 };
  const read = store.read.bind(store);
  store.read = (request, options = {}) => {
    if (!options.catchUp) counted.reads++;
    return read(request, options);
  };
  return counted;
}

function events(n: number, type = "Happened"): EventToAppend[] {
  return Array.from({ length: n }, (_, i) => ({
    id: randomUUID(),
    type,
    tags: [
      { key: "i", value: String(i) },
      { key: "i", value: String(i) },
    ],
    data: JSON.stringify({ i, text: "h\u00e9llo" }),
    metadata: i % 2 ? "" : '{"by": "test"}',
  }));
}

describe.each(storeTargets)("the feed without NATS on $name", (target) => {
  it("delivers its own commits from memory, exactly as the log holds them", async () => {
    const { store, cleanup } = await target.open();
    cleanups.push(cleanup);
    await untilListening(store);
    const feeds = new LiveFeeds({ store, source: undefined, log: quiet });
    cleanups.push(() => feeds.close());
    const counted = countFeedReads(store);
    const sub = collect({ store, feeds }, { boundary: "b" });
    cleanups.push(async () => sub.cancel());
    await store.append({ boundary: "b", events: events(1) });
    await sub.until((got) => got.length === 1);
    const before = counted.reads;
    for (let i = 0; i < 20; i++) await store.append({ boundary: "b", events: events(1 + (i % 3)) });
    await Promise.all(
      Array.from({ length: 10 }, () => store.append({ boundary: "b", events: events(2) })),
    );
    await sub.until((got) => got.length === 1 + 39 + 20);
    expect(counted.reads - before).toBe(0);
    const logged = await store.read({ boundary: "b", query: [], count: 1_000, direction: "asc" });
    expect(sub.events).toEqual(logged);
  });
});

describe("the feed without NATS, two processes on PostgreSQL", () => {
  it("reads the other process's commits from the store and its own from memory, in order", async () => {
    const schema = freshSchema("mem");
    const a = await openPostgresStore(schema, 4);
    const b = await openPostgresStore(schema, 4);
    cleanups.push(async () => {
      await a.close();
      await b.close();
      await dropSchema(schema);
    });
    const feeds = new LiveFeeds({ store: a, source: undefined, log: quiet });
    cleanups.push(() => feeds.close());
    const sub = collect({ store: a, feeds }, { boundary: "b" });
    cleanups.push(async () => sub.cancel());
    await a.append({ boundary: "b", events: events(1) });
    await sub.until((got) => got.length === 1);
    await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        (i % 2 ? a : b).append({ boundary: "b", events: events(1 + (i % 3)) }),
      ),
    );
    await sub.until((got) => got.length === 1 + 79);
    const logged = await a.read({ boundary: "b", query: [], count: 1_000, direction: "asc" });
    expect(sub.events).toEqual(logged);
  });
});
