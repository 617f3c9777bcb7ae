import { randomBytes, randomUUID } from "node:crypto";
import { type JetStreamManager, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LiveFeeds } from "../server/broker/feed.js";
import { connectNats, decodeEvents, streamNames } from "../server/broker/jetstream.js";
import { JetStreamPublisher } from "../server/broker/jetstream-publisher.js";
import { JetStreamSource } from "../server/broker/jetstream-source.js";
import { MessageAuth } from "../server/broker/message-auth.js";
import type { EventStore } from "../server/store/event-store.js";
import type { EventToAppend, Position } from "../server/store/types.js";
import {
  dropSchema,
  freshSchema,
  GROUP_COMMIT,
  NATS_URL,
  openPostgresStore,
  PG_URL,
} from "./support/databases.js";

/**
 * Per-boundary costs end when a boundary goes idle: the publisher lets go of it (lock, loop,
 * polling), the condition-check windows stay within their byte budget, and a feed without
 * subscribers is closed. Real PostgreSQL and NATS JetStream.
 */

const quiet = { info: () => {}, warn: () => {}, error: () => {} };
const auth = new MessageAuth(randomBytes(32));
const BOUNDARIES = Array.from({ length: 200 }, (_, i) => `idle_${i}`);

let nc: NatsConnection;
let jsm: JetStreamManager;
let admin: pg.Client;

beforeAll(async () => {
  nc = await connectNats(NATS_URL, quiet);
  jsm = await jetstreamManager(nc);
  admin = new pg.Client({ connectionString: PG_URL });
  await admin.connect();
});

afterAll(async () => {
  await admin?.end();
  await nc?.close();
});

function events(n: number, tags = 1): EventToAppend[] {
  return Array.from({ length: n }, (_, i) => ({
    id: randomUUID(),
    type: "Happened",
    tags: Array.from({ length: tags }, (_, t) => ({
      key: `k${t}`,
      value: `${i}-${t}`.padEnd(40, "v"),
    })),
    data: "{}",
    metadata: "",
  }));
}

async function eventually(check: () => Promise<boolean> | boolean, what: string, ms = 30_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function lastInStream(namespace: string, boundary: string): Promise<Position | undefined> {
  const { stream } = streamNames(namespace, boundary);
  const info = await jsm.streams.info(stream).catch(() => undefined);
  if (!info || info.state.messages === 0) return undefined;
  const m = await jsm.streams.getMessage(stream, { seq: info.state.last_seq });
  return m ? decodeEvents(m.data).at(-1)?.position : undefined;
}

async function published(store: EventStore, namespace: string, boundary: string) {
  const head = await store.head(boundary);
  const last = await lastInStream(namespace, boundary);
  return last !== undefined && last.commit === head.commit && last.prepare === head.prepare;
}

/** Advisory locks anyone holds on the database for these boundaries' publisher election. */
async function publisherLocks(schema: string, boundaries: readonly string[]): Promise<number> {
  const { rows } = await admin.query<{ n: string }>(
    `SELECT count(*) AS n FROM pg_locks
     WHERE locktype = 'advisory' AND granted AND objsubid = 1
       AND ((classid::int8 << 32) | objid::int8) IN (
         SELECT hashtextextended($1 || ':orisun-publisher:' || b, 0) FROM unnest($2::text[]) b)`,
    [schema, boundaries],
  );
  return Number(rows[0]?.n);
}

/** Counts the store reads and head lookups made through `store` from now on. */
function countReads(store: EventStore): { readonly count: number } {
  const counter = { count: 0 };
  const read = store.read.bind(store);
  const head = store.head.bind(store);
  store.read = (request) => {
    counter.count++;
    return read(request);
  };
  store.head = (boundary) => {
    counter.count++;
    return head(boundary);
  };
  return counter;
}

/** A commit whose NOTIFY never arrives: the rows an append writes, without pg_notify. */
async function commitSilently(schema: string, boundary: string): Promise<void> {
  await admin.query("BEGIN");
  try {
    const { rows } = await admin.query<{ c: string; p: string }>(
      `UPDATE "${schema}".orisun_boundaries SET last_commit = last_commit + 1,
         last_prepare = last_prepare + 1 WHERE name = $1
       RETURNING last_commit::text AS c, last_prepare::text AS p`,
      [boundary],
    );
    const row = rows[0];
    if (!row) throw new Error(`no boundary ${boundary}`);
    await admin.query(
      `INSERT INTO "${schema}".orisun_events
         (boundary, commit_position, prepare_position, event_id, event_type, tags, data)
       VALUES ($1, $2, $3, $4, 'Silent', '{}', '{}')`,
      [boundary, row.c, row.p, randomUUID()],
    );
    await admin.query("COMMIT");
  } catch (error) {
    await admin.query("ROLLBACK");
    throw error;
  }
}

describe("idle boundaries", () => {
  it("cost the publisher no lock, loop or polling, and come back on a commit or a sweep", async () => {
    const schema = freshSchema("idle");
    const store = await openPostgresStore(schema, 4);
    const publishers: JetStreamPublisher[] = [];
    const startPublisher = async () => {
      const publisher = new JetStreamPublisher({
        store,
        nc,
        namespace: schema,
        auth,
        log: quiet,
        lockRetryMs: 200,
        idleMs: 1_000,
        sweepMs: 500,
      });
      publishers.push(publisher);
      await publisher.start();
      return publisher;
    };
    try {
      // The lock name is what the check below counts.
      const probe = await store.locks.tryAcquire("orisun-publisher:idle_0");
      expect(await publisherLocks(schema, ["idle_0"])).toBe(1);
      await probe?.release();

      const publisher = await startPublisher();
      for (let i = 0; i < BOUNDARIES.length; i += 20) {
        await Promise.all(
          BOUNDARIES.slice(i, i + 20).map((boundary) =>
            store.append({ boundary, events: events(1) }),
          ),
        );
      }
      // A second event each, so that every stream has something to show.
      for (let i = 0; i < BOUNDARIES.length; i += 20) {
        await Promise.all(
          BOUNDARIES.slice(i, i + 20).map((boundary) =>
            store.append({ boundary, events: events(1) }),
          ),
        );
      }
      await eventually(
        async () =>
          (await Promise.all(BOUNDARIES.map((b) => published(store, schema, b)))).every(Boolean),
        "every boundary published",
      );

      // Idle: nothing held, no advisory lock, and no reads of the store for any boundary.
      await eventually(() => publisher.publishing.size === 0, "the publisher to let go");
      await eventually(
        async () => (await publisherLocks(schema, BOUNDARIES)) === 0,
        "the advisory locks to be released",
      );
      const reads = countReads(store);
      await new Promise((r) => setTimeout(r, 3_000));
      expect(reads.count).toBe(0);
      expect(publisher.publishing.size).toBe(0);

      // A commit brings the boundary back, and it is published after what went before.
      await store.append({ boundary: "idle_7", events: events(3) });
      await eventually(() => published(store, schema, "idle_7"), "idle_7 published again");
      const { stream } = streamNames(schema, "idle_7");
      const info = await jsm.streams.info(stream);
      expect(info.state.messages).toBe(2);
      await eventually(() => publisher.publishing.size === 0, "idle_7 to go idle again");

      // A commit whose signal is lost is published by the sweep.
      await commitSilently(schema, "idle_9");
      await eventually(() => published(store, schema, "idle_9"), "idle_9 published by the sweep");
      await eventually(() => publisher.publishing.size === 0, "idle_9 to go idle again");

      // A publisher starting with many idle boundaries does not take them all up.
      await publisher.close();
      const next = await startPublisher();
      const restartReads = countReads(store);
      let most = 0;
      const until = Date.now() + 2_500;
      while (Date.now() < until) {
        most = Math.max(most, next.publishing.size);
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(most).toBe(0);
      expect(restartReads.count).toBe(0);
      expect(await publisherLocks(schema, BOUNDARIES)).toBe(0);

      // ...yet publishes at start-up what was committed while no publisher ran.
      await next.close();
      await commitSilently(schema, "idle_11");
      await startPublisher();
      await eventually(() => published(store, schema, "idle_11"), "idle_11 published at start-up");
    } finally {
      for (const p of publishers) await p.close().catch(() => {});
      await store.close();
      await dropSchema(schema);
    }
  });

  it("keep the condition-check windows within their byte budget, and checks correct", async () => {
    const schema = freshSchema("idle");
    const budget = 1024 * 1024;
    const { EventStore } = await import("../server/store/event-store.js");
    const store = await EventStore.open({
      url: PG_URL,
      schema,
      poolSize: 4,
      // Unused with a URL.
      dataDir: "",
      onIdleError: () => {},
      groupCommit: GROUP_COMMIT,
      recentCommitsBytes: budget,
    });
    try {
      let most = 0;
      const firsts: Position[] = [];
      for (let b = 0; b < 300; b++) {
        firsts.push(await store.append({ boundary: `mem_${b}`, events: events(20, 16) }));
        most = Math.max(most, store.recentCommitsBytes);
      }
      // 300 x 20 events of 16 tags are ~19 MB by the estimate: most of it was let go.
      expect(most).toBeLessThanOrEqual(budget);
      expect(most).toBeGreaterThan(budget / 2);
      // The first boundary's window is gone: its checks are answered by the database, rightly.
      const after = { commit: 0n, prepare: 0n };
      const tag = { key: "k0", value: "0-0".padEnd(40, "v") };
      await expect(
        store.append({
          boundary: "mem_0",
          events: events(1),
          condition: { after, query: [{ types: [], tags: [tag] }] },
        }),
      ).rejects.toMatchObject({ kind: "condition_failed" });
      const head = firsts[0] as Position;
      await store.append({
        boundary: "mem_0",
        events: events(1),
        condition: { after: head, query: [{ types: [], tags: [tag] }] },
      });
    } finally {
      await store.close();
      await dropSchema(schema);
    }
  });

  it("close a boundary's live feed when its last subscriber leaves", async () => {
    const schema = freshSchema("idle");
    const store = await openPostgresStore(schema, 4);
    const source = new JetStreamSource({ nc, namespace: schema, auth, log: quiet });
    const feeds = new LiveFeeds({ store, source, log: quiet });
    try {
      const leaves: (() => void)[] = [];
      for (let b = 0; b < 30; b++) {
        leaves.push(await feeds.join(`feed_${b}`, { push: () => {} }));
        leaves.push(await feeds.join(`feed_${b}`, { push: () => {} }));
      }
      expect(feeds.following.length).toBe(30);
      for (const leave of leaves) leave();
      expect(feeds.following).toEqual([]);
      await eventually(async () => {
        let consumers = 0;
        for (let b = 0; b < 30; b++) {
          const { stream } = streamNames(schema, `feed_${b}`);
          consumers += (await jsm.streams.info(stream)).state.consumer_count;
        }
        return consumers === 0;
      }, "the feeds' consumers to be deleted");
    } finally {
      await feeds.close();
      await source.close();
      await store.close();
      await dropSchema(schema);
    }
  });
});
