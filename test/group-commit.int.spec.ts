import pg from "pg";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { StoreError } from "../server/store/errors.js";
import { EventStore } from "../server/store/event-store.js";
import type { Position } from "../server/store/types.js";
import {
  dropSchema,
  freshDataDir,
  freshSchema,
  GROUP_COMMIT,
  openPostgresStore,
  PG_URL,
  storeTargets,
} from "./support/databases.js";

describe.each(storeTargets)("group commit on $name", (target) => {
  let store: EventStore;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ store, cleanup } = await target.open());
  });
  afterAll(() => cleanup());

  it("a request the database refuses fails alone; the rest of its batch commits", async () => {
    const boundary = "poison";
    // A type PostgreSQL cannot store as text (api/ rejects it earlier; the store must still
    // isolate it when it reaches the database).
    const poison = "T\u0000";
    const requests = Array.from({ length: 8 }, (_, i) => ({
      boundary,
      events: [
        { id: `e${i}`, type: i === 4 ? poison : "T", tags: [], data: `{"i":${i}}`, metadata: "" },
      ],
    }));
    const results = await Promise.allSettled(requests.map((r) => store.append(r)));
    const failed = results.flatMap((r, i) => (r.status === "rejected" ? [i] : []));
    expect(failed).toEqual([4]);
    const reason = (results[4] as PromiseRejectedResult).reason;
    expect(reason).toBeInstanceOf(StoreError);
    expect((reason as StoreError).kind).toBe("internal");
    const events = await store.read({ boundary, query: [], count: 100, direction: "asc" });
    expect(events.map((e) => e.id).sort()).toEqual(["e0", "e1", "e2", "e3", "e5", "e6", "e7"]);
    const commits = events.map((e) => e.position.commit);
    expect(new Set(commits).size).toBe(7);
  });

  it("a request that conflicts with an earlier request of the same batch fails; the earlier commits", async () => {
    const boundary = "in_batch";
    const tag = [{ key: "user", value: "ada" }];
    const claim = (id: string) => ({
      boundary,
      events: [{ id, type: "Registered", tags: tag, data: "{}", metadata: "" }],
      condition: { after: { commit: 0n, prepare: 0n }, query: [{ types: [], tags: tag }] },
    });
    // A large first append holds the boundary's transaction, so the two claims queue behind it
    // and go together into the next one, in arrival order.
    const big = store.append({
      boundary,
      events: Array.from({ length: 2_000 }, (_, i) => ({
        id: `big${i}`,
        type: "Filler",
        tags: [],
        data: "{}",
        metadata: "",
      })),
    });
    const first = store.append(claim("claim1"));
    const second = store.append(claim("claim2"));
    const [, a, b] = await Promise.allSettled([big, first, second]);
    expect(a.status).toBe("fulfilled");
    expect(b.status).toBe("rejected");
    expect(((b as PromiseRejectedResult).reason as StoreError).kind).toBe("condition_failed");
    const claims = await store.read({
      boundary,
      query: [{ types: [], tags: tag }],
      count: 10,
      direction: "asc",
    });
    expect(claims.map((e) => e.id)).toEqual(["claim1"]);
  });
});

// The checks must read after the boundary's lock is granted: a statement's snapshot is taken when
// it starts, so checks sharing the locking statement would miss what another process committed
// while this one waited for the lock (server/store/append.ts).
describe("an append that waited for another process's transaction on PostgreSQL", () => {
  const schema = freshSchema("stale");
  let store: EventStore;
  let other: pg.Client;
  beforeAll(async () => {
    store = await openPostgresStore(schema);
    other = new pg.Client({ connectionString: PG_URL, options: `-c search_path="${schema}"` });
    await other.connect();
  });
  afterAll(async () => {
    await other?.end();
    await store?.close();
    await dropSchema(schema);
  });

  const tag = (value: string) => [{ key: "slot", value }];

  /** Another process's append: holds the boundary's row lock until `commit` is called. */
  async function otherAppend(boundary: string, slot: string) {
    await other.query("BEGIN");
    const { rows } = await other.query<{ c: string; p: string }>(
      `UPDATE orisun_boundaries SET last_commit = last_commit + 1, last_prepare = last_prepare + 1
       WHERE name = $1 RETURNING last_commit::text AS c, last_prepare::text AS p`,
      [boundary],
    );
    const { c, p } = rows[0] ?? { c: "", p: "" };
    await other.query(
      `INSERT INTO orisun_events
        (boundary, commit_position, prepare_position, event_id, event_type, tags, data)
       VALUES ($1, $2, $3, $4, 'T', $5, '{}')`,
      [boundary, c, p, `other-${slot}`, [JSON.stringify(["slot", slot])]],
    );
    return {
      position: { commit: BigInt(c), prepare: BigInt(p) },
      commit: () => other.query("COMMIT"),
    };
  }

  /** Resolves once some session waits for a lock: the store's append is blocked behind `other`. */
  async function untilWaitingForLock() {
    for (let i = 0; i < 200; i++) {
      const { rows } = await other.query(
        "SELECT 1 FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()",
      );
      if (rows.length > 0) return;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error("the append never waited for the lock");
  }

  async function claimWhileOtherCommits(boundary: string, otherSlot: string) {
    const start = await store.append({
      boundary,
      events: [{ id: "start", type: "T", tags: [], data: "{}", metadata: "" }],
    });
    const held = await otherAppend(boundary, otherSlot);
    const claim = store.append({
      boundary,
      events: [{ id: "claim", type: "T", tags: tag("a"), data: "{}", metadata: "" }],
      condition: { after: start, query: [{ types: [], tags: tag("a") }] },
    });
    claim.catch(() => {});
    await untilWaitingForLock();
    await held.commit();
    return { claim, otherAt: held.position };
  }

  it("fails the condition on an event the other process committed meanwhile", async () => {
    const { claim } = await claimWhileOtherCommits("stale_hit", "a");
    const error = await claim.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(StoreError);
    expect((error as StoreError).kind).toBe("condition_failed");
    const ids = (
      await store.read({ boundary: "stale_hit", query: [], count: 10, direction: "asc" })
    ).map((e) => e.id);
    expect(ids).toEqual(["start", "other-a"]);
  });

  it("appends after the other process's event when that does not match", async () => {
    const { claim, otherAt } = await claimWhileOtherCommits("stale_miss", "b");
    const at: Position = await claim;
    expect(at).toEqual({ commit: otherAt.commit + 1n, prepare: otherAt.prepare + 1n });
    const ids = (
      await store.read({ boundary: "stale_miss", query: [], count: 10, direction: "asc" })
    ).map((e) => e.id);
    expect(ids).toEqual(["start", "other-b", "claim"]);
  });
});

// After a transaction of N requests the next waits until N/2 requests are queued, or as long as
// that transaction took (at most maxWaitMs): callers answered together come back together
// (server/store/append.ts, Appender.drain).
describe("the transaction after a large one waits for its callers to come back, on PostgreSQL", () => {
  const schema = freshSchema("refill");
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const sessions: pg.Client[] = [];
  const stores: EventStore[] = [];
  beforeAll(async () => {
    for (let i = 0; i < 3; i++) {
      const client = new pg.Client({
        connectionString: PG_URL,
        options: `-c search_path="${schema}"`,
      });
      await client.connect();
      sessions.push(client);
    }
  });
  afterAll(async () => {
    for (const client of sessions) await client.end();
    for (const store of stores) await store.close();
    await dropSchema(schema);
  });

  /** A store whose transactions' sizes (requests per transaction) are recorded in order. */
  async function open(maxWaitMs: number) {
    const batches: number[] = [];
    const store = await EventStore.open({
      url: PG_URL,
      schema,
      poolSize: 4,
      dataDir: freshDataDir(),
      onIdleError: () => {},
      groupCommit: { ...GROUP_COMMIT, maxWaitMs },
      observer: {
        transaction: (_boundary, requests, run) => {
          batches.push(requests);
          return run();
        },
        committed: () => {},
      },
    });
    stores.push(store);
    return { store, batches };
  }

  /**
   * Session `n`'s uncommitted event with this id (at a position of its own): an append of the same
   * id waits for it.
   */
  async function holdId(n: 0 | 1, boundary: string, id: string) {
    const [session, watcher] = [sessions[n] as pg.Client, sessions[2] as pg.Client];
    await session.query("BEGIN");
    await session.query(
      `INSERT INTO orisun_events
        (boundary, commit_position, prepare_position, event_id, event_type, tags, data)
       VALUES ($1, $2, $2, $3, 'T', '{}', '{}')`,
      [boundary, 1_000_000 + n, id],
    );
    const { rows } = await session.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
    const pid = rows[0]?.pid;
    return {
      /** Resolves once a session of the store waits for this one. */
      async blocking() {
        for (let i = 0; i < 500; i++) {
          const { rows: waiting } = await watcher.query(
            "SELECT 1 FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            [pid],
          );
          if (waiting.length > 0) return;
          await sleep(10);
        }
        throw new Error(`no append waited for the held id ${id}`);
      },
      release: () => session.query("ROLLBACK"),
    };
  }

  const one = (boundary: string, id: string) => ({
    boundary,
    events: [{ id, type: "T", tags: [], data: "{}", metadata: "" }],
  });

  /**
   * A lone request, then `n` (eight unless given) that queue behind it and commit together in a
   * transaction held for `holdMs`; resolves once those are answered. Transactions so far: 1, 1, n.
   */
  async function afterBatch(store: EventStore, boundary: string, holdMs: number, n = 8) {
    await store.append(one(boundary, "start"));
    const a = await holdId(0, boundary, "a");
    const b = await holdId(1, boundary, "b1");
    const first = store.append(one(boundary, "a"));
    await a.blocking();
    const batch = Array.from({ length: n }, (_, i) => store.append(one(boundary, `b${i + 1}`)));
    await a.release();
    await first;
    await b.blocking();
    await sleep(holdMs);
    await b.release();
    await Promise.all(batch);
  }

  it("after a transaction of many, takes as many callers coming back within the wait into one", async () => {
    const { store, batches } = await open(5_000);
    await afterBatch(store, "refill_join", 1_000);
    const started = performance.now();
    const c = [store.append(one("refill_join", "c1"))];
    await sleep(50);
    for (let i = 2; i <= 7; i++) c.push(store.append(one("refill_join", `c${i}`)));
    await sleep(50);
    c.push(store.append(one("refill_join", "c8")));
    const positions = await Promise.all(c);
    // The eighth request made as many as the last transaction carried: the transaction started
    // then, not after the wait's 2 s (twice as long as the last transaction took).
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(batches).toEqual([1, 1, 8, 8]);
    expect(new Set(positions.map((p) => p.commit)).size).toBe(8);
  });

  it("after a transaction of three or four, waits for half as many", async () => {
    const { store, batches } = await open(5_000);
    await afterBatch(store, "refill_few", 1_000, 4);
    const started = performance.now();
    const c = [store.append(one("refill_few", "c1"))];
    await sleep(50);
    c.push(store.append(one("refill_few", "c2")));
    await Promise.all(c);
    // Two made half of the four: no wait for the last transaction's 1 s.
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(batches).toEqual([1, 1, 4, 2]);
  });

  it("sends what has come once the wait is over", async () => {
    const { store, batches } = await open(100);
    await afterBatch(store, "refill_timeout", 300);
    const started = performance.now();
    await store.append(one("refill_timeout", "c1"));
    // The last transaction took over 300 ms, and maxWaitMs caps the wait at 100.
    expect(performance.now() - started).toBeGreaterThanOrEqual(90);
    expect(batches).toEqual([1, 1, 8, 1]);
  });

  it("does not wait when maxWaitMs is 0", async () => {
    const { store, batches } = await open(0);
    await afterBatch(store, "refill_off", 300);
    await store.append(one("refill_off", "c1"));
    await sleep(50);
    await Promise.all([2, 3, 4].map((i) => store.append(one("refill_off", `c${i}`))));
    expect(batches).toEqual([1, 1, 8, 1, 1, 2]);
  });

  it("never holds back callers that come one or two at a time", async () => {
    const { store, batches } = await open(5_000);
    for (let i = 0; i < 10; i++) await store.append(one("refill_lone", `e${i}`));
    for (let i = 0; i < 10; i++) {
      const started = performance.now();
      await Promise.all([
        store.append(one("refill_lone", `p${i}`)),
        store.append(one("refill_lone", `q${i}`)),
      ]);
      // After a transaction of one or two, the next goes at once: no 5 s wait.
      expect(performance.now() - started).toBeLessThan(2_000);
    }
    expect(batches.slice(0, 10)).toEqual(Array.from({ length: 10 }, () => 1));
  });
});

describe("a boundary's drain keeps its connection only while nobody waits for one, on PostgreSQL", () => {
  const schema = freshSchema("lease");
  let store: EventStore;
  let transactions = 0;
  beforeAll(async () => {
    store = await EventStore.open({
      url: PG_URL,
      schema,
      // One connection: whatever the drain keeps, everybody else waits for.
      poolSize: 1,
      dataDir: freshDataDir(),
      onIdleError: () => {},
      groupCommit: GROUP_COMMIT,
      observer: {
        transaction: (_boundary, _requests, run) => {
          transactions++;
          return run();
        },
        committed: () => {},
      },
    });
  });
  afterAll(async () => {
    await store.close();
    await dropSchema(schema);
  });

  const pool = () => {
    const { pool } = store.database;
    if (!pool) throw new Error("a PostgreSQL store has a pool");
    return pool;
  };

  /** `callers` loops, each appending `count` events to `boundary` one after another. */
  const busy = (boundary: string, callers: number, count: number) =>
    Promise.all(
      Array.from({ length: callers }, async (_, caller) => {
        for (let i = 0; i < count; i++) {
          await store.append({
            boundary,
            events: [{ id: `${caller}-${i}`, type: "T", tags: [], data: "{}", metadata: "" }],
          });
        }
      }),
    );

  it("runs a busy boundary's transactions on few checkouts of the connection, and gives it back when done", async () => {
    let checkouts = 0;
    const count = () => checkouts++;
    pool().on("acquire", count);
    transactions = 0;
    try {
      await busy("lease_alone", 8, 40);
    } finally {
      pool().off("acquire", count);
    }
    expect(transactions).toBeGreaterThan(40);
    // Handed back to the pool after every transaction, it would be checked out once for each.
    expect(checkouts).toBeLessThan(transactions / 2);
    // Back once the last transaction's wait for more callers (GROUP_COMMIT's 5 ms) is over.
    await vi.waitFor(() => expect(pool().idleCount).toBe(pool().totalCount), { timeout: 1_000 });
    const events = await store.read({
      boundary: "lease_alone",
      query: [],
      count: 1_000,
      direction: "asc",
    });
    expect(events).toHaveLength(320);
  });

  it("hands it to the callers waiting for it: other boundaries and reads are not starved", async () => {
    let done = false;
    const loads = Promise.all([
      busy("lease_a", 8, 60),
      busy("lease_b", 8, 60),
      busy("lease_c", 8, 60),
    ]).finally(() => {
      done = true;
    });
    const reads: number[] = [];
    while (!done) {
      const started = performance.now();
      await store.read({ boundary: "lease_a", query: [], count: 1, direction: "desc" });
      if (!done) reads.push(performance.now() - started);
    }
    await loads;
    // Each read waited for the transactions in flight, not for a boundary's queue to empty.
    expect(reads.length).toBeGreaterThan(20);
    expect(Math.max(...reads)).toBeLessThan(1_000);
    const heads = await Promise.all(
      ["lease_a", "lease_b", "lease_c"].map((boundary) =>
        store.read({ boundary, query: [], count: 1_000, direction: "asc" }),
      ),
    );
    expect(heads.map((events) => events.length)).toEqual([480, 480, 480]);
  });
});
