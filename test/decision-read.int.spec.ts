import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readForDecision } from "../server/store/decision-read.js";
import { StoreError } from "../server/store/errors.js";
import type { EventStore } from "../server/store/event-store.js";
import { type EventToAppend, type Position, START, type Tag } from "../server/store/types.js";
import { storeTargets } from "./support/databases.js";

/** Heads on reads and the decision read, on the store itself (transports: protocols e2e). */

const tag = (key: string, value: string): Tag => ({ key, value });
let ids = 0;
const event = (type: string, tags: readonly Tag[] = []): EventToAppend => ({
  id: `d-${++ids}`,
  type,
  tags,
  data: "{}",
  metadata: "",
});
const positions = (events: readonly { position: Position }[]) =>
  events.map((e) => `${e.position.commit}:${e.position.prepare}`);

let boundaries = 0;
const freshBoundary = () => `decide_${++boundaries}`;

describe.each(storeTargets)("decision reads on $name", (target) => {
  let store: EventStore;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ store, cleanup } = await target.open());
  });
  afterAll(() => cleanup());

  it("returns the head whether or not anything matched, {0,0} for an empty boundary", async () => {
    const boundary = freshBoundary();
    const read = (type: string) =>
      store.readAtHead({
        boundary,
        query: [{ types: [type], tags: [] }],
        count: 10,
        direction: "asc",
      });
    expect(await read("A")).toEqual({ events: [], head: START });
    await store.append({ boundary, events: [event("A"), event("B")] });
    const head = await store.append({ boundary, events: [event("B")] });
    const a = await read("A");
    expect(a.head).toEqual(head);
    expect(a.events).toHaveLength(1);
    expect((await read("Z")).head).toEqual(head);
    const desc = await store.readAtHead({ boundary, query: [], count: 1, direction: "desc" });
    expect(desc.events[0]?.position).toEqual(head);
    expect(desc.head).toEqual(head);
  });

  it("reads every query at one head, pages with has_more, and reads an older head with `at`", async () => {
    const boundary = freshBoundary();
    const course = tag("course", "c1");
    const student = tag("student", "s1");
    for (let i = 0; i < 5; i++) {
      await store.append({
        boundary,
        events: [event("Subscribed", [course, tag("student", `s${i}`)])],
      });
    }
    const byCourse = { query: [{ types: ["Subscribed"], tags: [course] }], after: START, count: 2 };
    const byStudent = {
      query: [{ types: ["Subscribed"], tags: [student] }],
      after: START,
      count: 10,
    };
    const none = { query: [{ types: ["Nothing"], tags: [] }], after: START, count: 10 };
    const first = await readForDecision(store, { boundary, queries: [byCourse, byStudent, none] });
    expect(first.results.map((r) => [r.events.length, r.hasMore])).toEqual([
      [2, true],
      [1, false],
      [0, false],
    ]);
    // Another append after the first page must not show up in later pages read `at` its head.
    await store.append({ boundary, events: [event("Subscribed", [course, student])] });
    const seen = [...(first.results[0]?.events ?? [])];
    for (let more = true; more; ) {
      const after = seen.at(-1)?.position ?? START;
      const page = await readForDecision(store, {
        boundary,
        at: first.head,
        queries: [{ ...byCourse, after }],
      });
      expect(page.head).toEqual(first.head);
      seen.push(...(page.results[0]?.events ?? []));
      more = page.results[0]?.hasMore ?? false;
    }
    expect(seen).toHaveLength(5);
    expect(new Set(positions(seen)).size).toBe(5);
    const now = await readForDecision(store, { boundary, queries: [byStudent] });
    expect(now.results[0]?.events).toHaveLength(2);
    expect(now.head).not.toEqual(first.head);
  });

  it("refuses an `at` above the current head, naming the field", async () => {
    const boundary = freshBoundary();
    const head = await store.append({ boundary, events: [event("A")] });
    const error = await readForDecision(store, {
      boundary,
      at: { commit: head.commit + 1n, prepare: 0n },
      queries: [{ query: [], after: START, count: 1 }],
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StoreError);
    expect((error as StoreError).kind).toBe("invalid");
    expect((error as StoreError).message).toMatch(/^at: must not be above the boundary's head/);
  });

  it("keeps the answer within maxBytes across queries, one event per query once spent, with hasMore", async () => {
    const boundary = freshBoundary();
    const big = (type: string, i: number): EventToAppend => ({
      ...event(type),
      data: JSON.stringify({ i, pad: "x".repeat(1_000) }),
    });
    await store.append({
      boundary,
      events: Array.from({ length: 20 }, (_, i) => big(i % 2 === 0 ? "A" : "B", i)),
    });
    const a = { query: [{ types: ["A"], tags: [] }], after: START, count: 100 };
    const b = { query: [{ types: ["B"], tags: [] }], after: START, count: 100 };
    const maxBytes = 5 * 1_200;
    const first = await readForDecision(store, { boundary, queries: [a, b], maxBytes });
    const [ra, rb] = first.results;
    // Each event counts about 1,130 bytes: five fit, and B gets the one it is always given.
    expect(ra?.events).toHaveLength(5);
    expect(ra?.hasMore).toBe(true);
    expect(rb?.events).toHaveLength(1);
    expect(rb?.hasMore).toBe(true);
    // Paging at the same head with each query's last position reaches every event once.
    const seen = { a: [...(ra?.events ?? [])], b: [...(rb?.events ?? [])] };
    for (let round = 0; round < 20; round++) {
      const queries = [
        { ...a, after: seen.a.at(-1)?.position ?? START },
        { ...b, after: seen.b.at(-1)?.position ?? START },
      ];
      const page = await readForDecision(store, { boundary, queries, at: first.head, maxBytes });
      seen.a.push(...(page.results[0]?.events ?? []));
      seen.b.push(...(page.results[1]?.events ?? []));
      if (!page.results.some((r) => r.hasMore)) break;
    }
    expect(seen.a.map((e) => JSON.parse(e.data).i)).toEqual([0, 2, 4, 6, 8, 10, 12, 14, 16, 18]);
    expect(seen.b.map((e) => JSON.parse(e.data).i)).toEqual([1, 3, 5, 7, 9, 11, 13, 15, 17, 19]);
  });
});
