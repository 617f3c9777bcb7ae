import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StoreError } from "../server/store/errors.js";
import type { EventStore } from "../server/store/event-store.js";
import {
  type AppendRequest,
  comparePositions,
  type EventToAppend,
  type Position,
  type Query,
  START,
  type StoredEvent,
  type Tag,
} from "../server/store/types.js";
import { dropSchema, freshSchema, openPostgresStore, storeTargets } from "./support/databases.js";
import { type Attempt, verifyLog } from "./support/dcb-log.js";
import { prng } from "./support/prng.js";

const tag = (key: string, value: string): Tag => ({ key, value });

/** Every event of a boundary, in pages (from is inclusive: the page's first is the last seen). */
async function readAll(store: EventStore, boundary: string): Promise<StoredEvent[]> {
  const out: StoredEvent[] = [];
  let from: Position | undefined;
  for (;;) {
    const page = await store.read({ boundary, query: [], from, count: 1000, direction: "asc" });
    const fresh =
      from === undefined
        ? page
        : page.filter((e) => comparePositions(e.position, from as Position) > 0);
    out.push(...fresh);
    const last = page.at(-1);
    if (fresh.length === 0 || !last) return out;
    from = last.position;
  }
}

/**
 * Follows the log while it is written, always reading from its cursor onward. If an event ever
 * committed below a position this reader had already seen, it would never be seen, and the
 * final comparison with the whole log would fail.
 */
function follow(store: EventStore, boundary: string, running: () => boolean) {
  const seen: StoredEvent[] = [];
  let cursor: Position = START;
  let violation: string | undefined;
  const poll = async (): Promise<void> => {
    const page = await store.read({
      boundary,
      query: [],
      from: cursor,
      count: 1000,
      direction: "asc",
    });
    for (const e of page) {
      if (comparePositions(e.position, cursor) <= 0) continue;
      seen.push(e);
      cursor = e.position;
    }
  };
  const done = (async () => {
    while (running()) {
      try {
        await poll();
      } catch (error) {
        violation = String(error);
        return;
      }
      await new Promise((r) => setTimeout(r, 2));
    }
  })();
  return {
    async finish(): Promise<{ seen: StoredEvent[]; violation: string | undefined }> {
      await done;
      // Catch up after the writers stopped.
      for (;;) {
        const before = seen.length;
        await poll();
        if (seen.length === before) break;
      }
      return { seen, violation };
    },
  };
}

const TAGS = ["t0", "t1", "t2", "t3"];

/**
 * One worker of the contention test: reads the last event matching a random query, then appends
 * 1-2 events carrying random tags under the condition "nothing matching after what I read".
 */
async function contend(
  stores: readonly EventStore[],
  boundary: string,
  worker: number,
  deadline: number,
  maxAttempts: number,
  attempts: Attempt[],
): Promise<void> {
  const random = prng(1000 + worker);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
  for (let n = 0; n < maxAttempts && Date.now() < deadline; n++) {
    const store = stores[worker % stores.length] as EventStore;
    const roll = random();
    const query: Query =
      roll < 0.6
        ? [{ types: [], tags: [tag("k", pick(TAGS))] }]
        : roll < 0.8
          ? [
              { types: [], tags: [tag("k", pick(TAGS))] },
              { types: ["Special"], tags: [] },
            ]
          : [{ types: ["Special"], tags: [tag("k", pick(TAGS))] }];
    const [last] = await store.read({ boundary, query, count: 1, direction: "desc" });
    const after = last?.position ?? START;
    const events: EventToAppend[] = Array.from(
      { length: 1 + Math.floor(random() * 2) },
      (_, i) => ({
        id: `w${worker}-${n}-${i}`,
        type: random() < 0.3 ? "Special" : "Plain",
        tags: [tag("k", pick(TAGS)), tag("worker", String(worker))],
        data: `{"w":${worker},"n":${n}}`,
        metadata: "",
      }),
    );
    const attempt: Attempt = { request: { boundary, events, condition: { after, query } } };
    attempts.push(attempt);
    try {
      attempt.result = await store.append(attempt.request);
    } catch (error) {
      if (!(error instanceof StoreError)) throw error;
      attempt.error = error;
    }
  }
}

async function runContention(stores: readonly EventStore[], boundary: string, workers: number) {
  const attempts: Attempt[] = [];
  const deadline = Date.now() + 3_000;
  let running = true;
  const follower = follow(stores[0] as EventStore, boundary, () => running);
  await Promise.all(
    Array.from({ length: workers }, (_, w) =>
      contend(stores, boundary, w, deadline, 150, attempts),
    ),
  );
  running = false;
  const { seen, violation } = await follower.finish();
  const log = await readAll(stores[0] as EventStore, boundary);
  return { attempts, log, seen, violation };
}

function checkContention(result: Awaited<ReturnType<typeof runContention>>): void {
  const { attempts, log, seen, violation } = result;
  expect(violation).toBeUndefined();
  const accepted = attempts.filter((a) => a.result);
  const rejected = attempts.filter((a) => a.error);
  expect(accepted.length + rejected.length).toBe(attempts.length);
  expect(rejected.map((a) => a.error?.kind).filter((k) => k !== "condition_failed")).toEqual([]);
  // The run must have had both outcomes to prove anything.
  expect(accepted.length).toBeGreaterThan(10);
  expect(rejected.length).toBeGreaterThan(0);
  verifyLog(log, attempts);
  // A reader following the log saw exactly the final log: nothing appeared below its cursor.
  expect(seen.map((e) => e.id)).toEqual(log.map((e) => e.id));
}

describe.each(storeTargets)("concurrency on $name", (target) => {
  let store: EventStore;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ store, cleanup } = await target.open());
  });
  afterAll(() => cleanup());

  it("16 writers with random overlapping conditions: every accepted condition held at commit", async () => {
    checkContention(await runContention([store], "contended", 16));
  });

  it("disjoint writers (own tag, own last position) never conflict", async () => {
    const boundary = "disjoint";
    const workers = 8;
    const perWorker = 25;
    const attempts: Attempt[] = [];
    await Promise.all(
      Array.from({ length: workers }, async (_, w) => {
        let after = START;
        const query: Query = [{ types: [], tags: [tag("owner", `o${w}`)] }];
        for (let n = 0; n < perWorker; n++) {
          const attempt: Attempt = {
            request: {
              boundary,
              events: [
                {
                  id: `d${w}-${n}`,
                  type: "T",
                  tags: [tag("owner", `o${w}`)],
                  data: "{}",
                  metadata: "",
                },
              ],
              condition: { after, query },
            },
          };
          attempts.push(attempt);
          try {
            attempt.result = await store.append(attempt.request);
            after = attempt.result;
          } catch (error) {
            if (!(error instanceof StoreError)) throw error;
            attempt.error = error;
          }
        }
      }),
    );
    expect(attempts.filter((a) => a.error).map((a) => a.error?.message)).toEqual([]);
    const log = await readAll(store, boundary);
    expect(log).toHaveLength(workers * perWorker);
    verifyLog(log, attempts);
  });

  it("group commit: one burst with a conflict, exact duplicates and an overlap", async () => {
    const boundary = "burst";
    let transactions = 0;
    const stop = store.onCommit((b) => {
      if (b === boundary) transactions++;
    });
    const ev = (id: string, tags: Tag[] = []): EventToAppend => ({
      id,
      type: "T",
      tags,
      data: `{"id":"${id}"}`,
      metadata: "",
    });
    const slot: Query = [{ types: [], tags: [tag("slot", "s1")] }];
    const named: Record<string, AppendRequest> = {
      // The first request of an idle boundary commits alone; its duplicate later in the burst
      // is answered from the log.
      dupLogA: { boundary, events: [ev("L1"), ev("L2")] },
      filler1: { boundary, events: [ev("F1")] },
      conflictA: {
        boundary,
        events: [ev("CA", [tag("slot", "s1")])],
        condition: { after: START, query: slot },
      },
      filler2: { boundary, events: [ev("F2"), ev("F3")] },
      dupBatchA: { boundary, events: [ev("D1"), ev("D2")] },
      conflictB: {
        boundary,
        events: [ev("CB", [tag("slot", "s1")])],
        condition: { after: START, query: slot },
      },
      dupLogB: { boundary, events: [ev("L1"), ev("L2")] },
      dupBatchB: { boundary, events: [ev("D1"), ev("D2")], condition: { after: START, query: [] } },
      overlap: { boundary, events: [ev("D2"), ev("P1")] },
      filler3: { boundary, events: [ev("F4")] },
    };
    const names = Object.keys(named);
    const settled = await Promise.allSettled(
      names.map((n) => store.append(named[n] as AppendRequest)),
    );
    stop();
    const outcome = Object.fromEntries(names.map((n, i) => [n, settled[i]]));
    const ok = (n: string): Position => {
      const s = outcome[n];
      if (s?.status !== "fulfilled") throw new Error(`${n} failed: ${String(s?.reason)}`);
      return s.value;
    };
    const kind = (n: string): string | undefined => {
      const s = outcome[n];
      return s?.status === "rejected" ? (s.reason as StoreError).kind : undefined;
    };

    const conflictWinners = ["conflictA", "conflictB"].filter(
      (n) => outcome[n]?.status === "fulfilled",
    );
    expect(conflictWinners).toHaveLength(1);
    const loser = conflictWinners[0] === "conflictA" ? "conflictB" : "conflictA";
    expect(kind(loser)).toBe("condition_failed");
    expect(ok("dupLogB")).toEqual(ok("dupLogA"));
    expect(ok("dupBatchB")).toEqual(ok("dupBatchA"));
    expect(kind("overlap")).toBe("already_exists");
    const positions = [
      "dupLogA",
      "filler1",
      "filler2",
      "dupBatchA",
      "filler3",
      conflictWinners[0] ?? "",
    ].map(ok);
    expect(new Set(positions.map((p) => p.commit)).size).toBe(positions.length);

    const log = await readAll(store, boundary);
    const winnerId = conflictWinners[0] === "conflictA" ? "CA" : "CB";
    expect(log.map((e) => e.id).sort()).toEqual(
      ["L1", "L2", "F1", "F2", "F3", "D1", "D2", "F4", winnerId].sort(),
    );
    const attempts: Attempt[] = names
      .filter((n) => !["dupLogB", "dupBatchB"].includes(n))
      .map((n) => {
        const s = outcome[n];
        const request = named[n] as AppendRequest;
        return s?.status === "fulfilled"
          ? { request, result: s.value }
          : {
              request: {
                ...request,
                events: request.events.filter((e) => e.id === "P1" || e.id.startsWith("C")),
              },
              error: s?.reason as StoreError,
            };
      });
    verifyLog(log, attempts);
    // The burst really was grouped: fewer transactions than accepted appends.
    expect(transactions).toBeGreaterThan(0);
    expect(transactions).toBeLessThan(positions.length);
  });
});

describe("two store instances on one PostgreSQL schema", () => {
  const schema = freshSchema("two");
  const stores: EventStore[] = [];
  beforeAll(async () => {
    for (let i = 0; i < 2; i++) {
      stores.push(await openPostgresStore(schema));
    }
  });
  afterAll(async () => {
    for (const store of stores) await store.close();
    await dropSchema(schema);
  });

  it("positions follow commit order across both; every accepted condition held", async () => {
    checkContention(await runContention(stores, "shared", 16));
  });

  it("the same condition sent to both at once succeeds exactly once", async () => {
    const boundary = "race";
    const [one, two] = stores as [EventStore, EventStore];
    for (let round = 0; round < 20; round++) {
      const query: Query = [{ types: [], tags: [tag("slot", `r${round}`)] }];
      const request = (side: string): AppendRequest => ({
        boundary,
        events: [
          {
            id: `${side}${round}`,
            type: "T",
            tags: [tag("slot", `r${round}`)],
            data: "{}",
            metadata: "",
          },
        ],
        condition: { after: START, query },
      });
      const settled = await Promise.allSettled([
        one.append(request("a")),
        two.append(request("b")),
      ]);
      const winners = settled.filter((s) => s.status === "fulfilled");
      expect(winners, `round ${round}`).toHaveLength(1);
      const failure = settled.find((s) => s.status === "rejected");
      expect(failure?.status === "rejected" && (failure.reason as StoreError).kind).toBe(
        "condition_failed",
      );
    }
    const log = await readAll(one, boundary);
    expect(log).toHaveLength(20);
    expect(await readAll(two, boundary)).toEqual(log);
    expect(await one.head(boundary)).toEqual(log.at(-1)?.position);
  });

  it("claims on markers over 1,000 events back are won exactly once across both, sparse or fenced", async () => {
    // Every check goes past the walk of the events after its marker: to the sparse check (a tag,
    // with or without a type), or the fenced one when a criterion's tags are on 1,200 events.
    const boundary = "far";
    const [one] = stores as [EventStore, EventStore];
    const fill: AppendRequest = {
      boundary,
      events: Array.from({ length: 1_200 }, (_, i) => ({
        id: `f${i}`,
        type: "Filler",
        tags: [tag("filler", "x")],
        data: "{}",
        metadata: "",
      })),
    };
    const attempts: Attempt[] = [{ request: fill, result: await one.append(fill) }];
    await Promise.all(
      Array.from({ length: 16 }, async (_, w) => {
        const random = prng(7_000 + w);
        for (let n = 0; n < 30; n++) {
          const slot = tag("slot", `s${Math.floor(random() * 40)}`);
          const roll = random();
          const query: Query =
            roll < 0.4
              ? [{ types: [], tags: [slot] }]
              : roll < 0.7
                ? [{ types: ["Claimed"], tags: [slot] }]
                : [
                    { types: ["Claimed"], tags: [slot] },
                    { types: ["Claimed"], tags: [tag("filler", "x")] },
                  ];
          const request: AppendRequest = {
            boundary,
            events: [{ id: `w${w}-${n}`, type: "Claimed", tags: [slot], data: "{}", metadata: "" }],
            condition: { after: START, query },
          };
          const attempt: Attempt = { request };
          attempts.push(attempt);
          try {
            attempt.result = await (stores[w % 2] as EventStore).append(request);
          } catch (error) {
            if (!(error instanceof StoreError)) throw error;
            attempt.error = error;
          }
        }
      }),
    );
    expect(attempts.filter((a) => a.error && a.error.kind !== "condition_failed")).toEqual([]);
    const log = await readAll(one, boundary);
    verifyLog(log, attempts);
    const claims = log.filter((e) => e.type === "Claimed").map((e) => e.tags[0]?.value);
    // Each slot claimed at most once, and the slots someone tried were all claimed.
    expect(new Set(claims).size).toBe(claims.length);
    const tried = new Set(attempts.slice(1).map((a) => a.request.events[0]?.tags[0]?.value));
    expect(new Set(claims)).toEqual(tried);
  });

  it("a store on another schema of the same database opens and is isolated", async () => {
    // ORISUN_PG_SCHEMA: two deployments may share one database under different schemas.
    const other = freshSchema("other");
    try {
      const store = await openPostgresStore(other, 2);
      try {
        expect(
          await store.read({ boundary: "race", query: [], count: 10, direction: "asc" }),
        ).toEqual([]);
        const position = await store.append({
          boundary: "race",
          events: [{ id: "a0", type: "T", tags: [], data: "{}", metadata: "" }],
        });
        expect(position).toEqual({ commit: 1n, prepare: 1n });
      } finally {
        await store.close();
      }
    } finally {
      await dropSchema(other);
    }
    expect(await readAll(stores[0] as EventStore, "race")).toHaveLength(20);
  });
});
