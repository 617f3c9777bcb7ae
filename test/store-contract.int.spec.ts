import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StoreError, type StoreErrorKind } from "../server/store/errors.js";
import type { EventStore } from "../server/store/event-store.js";
import {
  type Condition,
  type EventToAppend,
  type Position,
  type Query,
  START,
  type StoredEvent,
  type Tag,
} from "../server/store/types.js";
import { storeTargets } from "./support/databases.js";

/**
 * The DCB contract of the store, as scripted by well-known DCB stores (dcb.events, Emmett,
 * dcb-event-store): which conditions must fail, which must pass, how reads filter and order, how
 * positions, tags, ids and payloads behave.
 */

const tag = (key: string, value: string): Tag => ({ key, value });
const pos = (commit: number, prepare: number): Position => ({
  commit: BigInt(commit),
  prepare: BigInt(prepare),
});

let idCounter = 0;
function event(type: string, tags: readonly Tag[] = [], id?: string): EventToAppend {
  idCounter++;
  return { id: id ?? `ev-${idCounter}`, type, tags, data: `{"n":${idCounter}}`, metadata: "" };
}

let boundaryCounter = 0;
function freshBoundary(prefix = "b"): string {
  boundaryCounter++;
  return `${prefix}_${boundaryCounter}`;
}

async function rejection(promise: Promise<unknown>): Promise<StoreError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(StoreError);
    return error as StoreError;
  }
  throw new Error("expected the append to be rejected, but it resolved");
}

async function expectKind(promise: Promise<unknown>, kind: StoreErrorKind): Promise<void> {
  const error = await rejection(promise);
  expect(error.kind).toBe(kind);
}

describe.each(storeTargets)("DCB store contract on $name", (target) => {
  let store: EventStore;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ store, cleanup } = await target.open());
  });
  afterAll(() => cleanup());

  const readAll = (boundary: string, query: Query = []): Promise<StoredEvent[]> =>
    store.read({ boundary, query, count: 10_000, direction: "asc" });
  const ids = (events: readonly StoredEvent[]): string[] => events.map((e) => e.id);

  /**
   * The scripted log, one append per event:
   *   {1,1} CourseDefined      course:c1
   *   {2,2} StudentRegistered  student:s1
   *   {3,3} StudentSubscribed  course:c1 student:s1
   */
  async function seedCourses(boundary: string): Promise<Position[]> {
    return [
      await store.append({ boundary, events: [event("CourseDefined", [tag("course", "c1")])] }),
      await store.append({
        boundary,
        events: [event("StudentRegistered", [tag("student", "s1")])],
      }),
      await store.append({
        boundary,
        events: [event("StudentSubscribed", [tag("course", "c1"), tag("student", "s1")])],
      }),
    ];
  }

  describe("appends that must fail: a matching event exists after the marker", () => {
    const failing: readonly { name: string; query: Query; after?: Position }[] = [
      { name: "match-all (empty query) from the start", query: [], after: START },
      { name: "match-all (empty query) after the first event", query: [] },
      { name: "by type", query: [{ types: ["StudentRegistered"], tags: [] }] },
      {
        name: "by one of several types",
        query: [{ types: ["Nope", "StudentSubscribed"], tags: [] }],
      },
      { name: "by tag", query: [{ types: [], tags: [tag("student", "s1")] }] },
      {
        name: "by type and tag",
        query: [{ types: ["StudentSubscribed"], tags: [tag("course", "c1")] }],
      },
      {
        name: "by two tags AND'ed within one criterion",
        query: [{ types: [], tags: [tag("course", "c1"), tag("student", "s1")] }],
      },
      {
        name: "by two criteria OR'ed (only the second matches)",
        query: [
          { types: ["Nope"], tags: [] },
          { types: [], tags: [tag("student", "s1")] },
        ],
      },
      {
        name: "by tag, marker in the middle of the log",
        query: [{ types: [], tags: [tag("course", "c1")] }],
        after: pos(2, 2),
      },
    ];

    it.each(failing)("$name", async ({ query, after }) => {
      const boundary = freshBoundary("fail");
      const seeded = await seedCourses(boundary);
      const marker = after ?? seeded[0] ?? START;
      const attempt = event("Attempt", [tag("course", "c1"), tag("student", "s1")]);
      await expectKind(
        store.append({ boundary, events: [attempt], condition: { after: marker, query } }),
        "condition_failed",
      );
      // Nothing written, the head did not move, and the id is still free.
      expect(ids(await readAll(boundary))).toHaveLength(3);
      expect(await store.head(boundary)).toEqual(seeded[2]);
      const later = await store.append({ boundary, events: [attempt] });
      expect(later.commit).toBe((seeded[2]?.commit ?? 0n) + 1n);
    });
  });

  describe("appends that must succeed: no matching event after the marker", () => {
    const passing: readonly { name: string; query: Query; after: "first" | "last" | "start" }[] = [
      {
        name: "matching event exactly at the marker (the marker is exclusive)",
        query: [{ types: ["CourseDefined"], tags: [] }],
        after: "first",
      },
      { name: "match-all with the marker at the last event", query: [], after: "last" },
      {
        name: "matching events only before the marker",
        query: [{ types: [], tags: [tag("course", "c1")] }],
        after: "last",
      },
      {
        name: "disjoint tag from the start",
        query: [{ types: [], tags: [tag("student", "s2")] }],
        after: "start",
      },
      {
        name: "same key, other value",
        query: [{ types: [], tags: [tag("course", "c2")] }],
        after: "start",
      },
      {
        name: "unknown type from the start",
        query: [{ types: ["Nope"], tags: [] }],
        after: "start",
      },
      {
        name: "type matches but the tag does not",
        query: [{ types: ["StudentSubscribed"], tags: [tag("course", "c2")] }],
        after: "start",
      },
      {
        name: "only one of two AND'ed tags matches",
        query: [{ types: [], tags: [tag("course", "c1"), tag("student", "s2")] }],
        after: "start",
      },
      {
        name: "tag matches but the type does not",
        query: [{ types: ["StudentRegistered"], tags: [tag("course", "c1")] }],
        after: "start",
      },
      {
        name: "two OR'ed criteria, neither matches",
        query: [
          { types: ["Nope"], tags: [] },
          { types: [], tags: [tag("student", "s9")] },
        ],
        after: "start",
      },
      {
        name: "non-matching events after the marker",
        query: [{ types: ["CourseDefined"], tags: [tag("course", "c1")] }],
        after: "first",
      },
    ];

    it.each(passing)("$name", async ({ query, after }) => {
      const boundary = freshBoundary("pass");
      const seeded = await seedCourses(boundary);
      const marker = after === "start" ? START : after === "first" ? seeded[0] : seeded[2];
      if (!marker) throw new Error("seed failed");
      const attempt = event("Attempt", [tag("course", "c1")]);
      const position = await store.append({
        boundary,
        events: [attempt],
        condition: { after: marker, query },
      });
      expect(position).toEqual(pos(4, 4));
      const log = await readAll(boundary);
      expect(ids(log).at(-1)).toBe(attempt.id);
      expect(log).toHaveLength(4);
    });

    it("an empty boundary passes a match-all condition from the start", async () => {
      const boundary = freshBoundary("empty");
      const position = await store.append({
        boundary,
        events: [event("First")],
        condition: { after: START, query: [] },
      });
      expect(await store.head(boundary)).toEqual(position);
    });

    it("a marker in the middle of a commit sees the rest of that commit", async () => {
      const boundary = freshBoundary("mid");
      const first = await store.append({
        boundary,
        events: [event("A", [tag("x", "1")]), event("B", [tag("x", "1")])],
      });
      expect(first).toEqual(pos(1, 2));
      const query: Query = [{ types: ["B"], tags: [] }];
      await expectKind(
        store.append({ boundary, events: [event("C")], condition: { after: pos(1, 1), query } }),
        "condition_failed",
      );
      await store.append({
        boundary,
        events: [event("C")],
        condition: { after: pos(1, 2), query },
      });
    });
  });

  describe("reads", () => {
    const boundary = "reads";
    // {1,1} A CourseDefined course:c1 | {1,2} B StudentRegistered student:s1   (one append)
    // {2,3} C StudentSubscribed course:c1 student:s1
    // {3,4} D CourseDefined course:c2
    // {4,5} E StudentRegistered student:s2
    beforeAll(async () => {
      await store.append({
        boundary,
        events: [
          event("CourseDefined", [tag("course", "c1")], "A"),
          event("StudentRegistered", [tag("student", "s1")], "B"),
        ],
      });
      await store.append({
        boundary,
        events: [event("StudentSubscribed", [tag("course", "c1"), tag("student", "s1")], "C")],
      });
      await store.append({
        boundary,
        events: [event("CourseDefined", [tag("course", "c2")], "D")],
      });
      await store.append({
        boundary,
        events: [event("StudentRegistered", [tag("student", "s2")], "E")],
      });
      // Noise in another boundary must never show up.
      await store.append({
        boundary: "reads_other",
        events: [event("CourseDefined", [tag("course", "c1")], "X")],
      });
    });

    const read = (
      query: Query,
      direction: "asc" | "desc" = "asc",
      from?: Position,
      count = 100,
    ): Promise<string[]> =>
      store.read({ boundary, query, direction, from, count }).then((events) => ids(events));

    it("forward returns every event in position order with its position", async () => {
      const events = await store.read({ boundary, query: [], count: 100, direction: "asc" });
      expect(ids(events)).toEqual(["A", "B", "C", "D", "E"]);
      expect(events.map((e) => e.position)).toEqual([
        pos(1, 1),
        pos(1, 2),
        pos(2, 3),
        pos(3, 4),
        pos(4, 5),
      ]);
      expect(events.every((e) => e.boundary === boundary)).toBe(true);
      expect(events.every((e) => e.createdAt instanceof Date)).toBe(true);
      expect(await store.head(boundary)).toEqual(pos(4, 5));
    });

    it("backward returns them in reverse", async () => {
      expect(await read([], "desc")).toEqual(["E", "D", "C", "B", "A"]);
    });

    it("from_position is inclusive in both directions", async () => {
      expect(await read([], "asc", pos(2, 3))).toEqual(["C", "D", "E"]);
      expect(await read([], "desc", pos(2, 3))).toEqual(["C", "B", "A"]);
      expect(await read([], "asc", pos(1, 2))).toEqual(["B", "C", "D", "E"]);
      expect(await read([], "desc", pos(1, 2))).toEqual(["B", "A"]);
    });

    it("from_position between or beyond events", async () => {
      expect(await read([], "asc", pos(2, 0))).toEqual(["C", "D", "E"]);
      expect(await read([], "desc", pos(2, 99))).toEqual(["C", "B", "A"]);
      expect(await read([], "asc", pos(99, 0))).toEqual([]);
      expect(await read([], "desc", pos(99, 0))).toEqual(["E", "D", "C", "B", "A"]);
      expect(await read([], "asc", START)).toEqual(["A", "B", "C", "D", "E"]);
      expect(await read([], "desc", START)).toEqual([]);
    });

    it("from_position combines with a query", async () => {
      const courseC1: Query = [{ types: [], tags: [tag("course", "c1")] }];
      expect(await read(courseC1, "asc", pos(1, 2))).toEqual(["C"]);
      expect(await read(courseC1, "desc", pos(1, 2))).toEqual(["A"]);
    });

    it("count limits the result in both directions", async () => {
      expect(await read([], "asc", undefined, 2)).toEqual(["A", "B"]);
      expect(await read([], "desc", undefined, 2)).toEqual(["E", "D"]);
      expect(await read([], "asc", pos(2, 3), 2)).toEqual(["C", "D"]);
      expect(await read([], "desc", pos(2, 3), 1)).toEqual(["C"]);
      expect(await read([{ types: ["CourseDefined"], tags: [] }], "desc", undefined, 1)).toEqual([
        "D",
      ]);
    });

    it("criteria are OR'ed", async () => {
      expect(
        await read([
          { types: ["CourseDefined"], tags: [] },
          { types: [], tags: [tag("student", "s2")] },
        ]),
      ).toEqual(["A", "D", "E"]);
      // An event matching both criteria comes once.
      expect(
        await read([
          { types: [], tags: [tag("course", "c1")] },
          { types: [], tags: [tag("student", "s1")] },
        ]),
      ).toEqual(["A", "B", "C"]);
    });

    it("types OR within a criterion; types AND tags, and tags AND'ed, within one", async () => {
      expect(await read([{ types: ["CourseDefined", "StudentRegistered"], tags: [] }])).toEqual([
        "A",
        "B",
        "D",
        "E",
      ]);
      expect(
        await read([
          { types: ["StudentSubscribed", "CourseDefined"], tags: [tag("course", "c1")] },
        ]),
      ).toEqual(["A", "C"]);
      expect(
        await read([{ types: [], tags: [tag("course", "c1"), tag("student", "s1")] }]),
      ).toEqual(["C"]);
      expect(await read([{ types: ["CourseDefined"], tags: [tag("student", "s1")] }])).toEqual([]);
    });

    it("an unknown type, tag or boundary returns nothing", async () => {
      expect(await read([{ types: ["Unknown"], tags: [] }])).toEqual([]);
      expect(await read([{ types: [], tags: [tag("course", "c9")] }])).toEqual([]);
      // Same value under another key is another tag.
      expect(await read([{ types: [], tags: [tag("student", "c1")] }])).toEqual([]);
      for (const direction of ["asc", "desc"] as const) {
        expect(
          await store.read({ boundary: "never_written", query: [], count: 100, direction }),
        ).toEqual([]);
        expect(await store.read({ boundary: "", query: [], count: 100, direction })).toEqual([]);
      }
      expect(await store.head("never_written")).toEqual(START);
    });
  });

  describe("positions", () => {
    it("events of one append share a commit; prepare increases; each append commits higher", async () => {
      const boundary = freshBoundary("positions");
      const batch = [event("T"), event("T"), event("T")];
      const first = await store.append({ boundary, events: batch });
      const second = await store.append({ boundary, events: [event("T"), event("T")] });
      const third = await store.append({ boundary, events: [event("T")] });
      const log = await readAll(boundary);
      expect(log).toHaveLength(6);
      const commits = log.map((e) => e.position.commit);
      expect(commits.slice(0, 3).every((c) => c === first.commit)).toBe(true);
      expect(commits.slice(3, 5).every((c) => c === second.commit)).toBe(true);
      expect(commits[5]).toBe(third.commit);
      expect(second.commit > first.commit).toBe(true);
      expect(third.commit > second.commit).toBe(true);
      // The returned position is that of the last event written.
      expect(log[2]?.position).toEqual(first);
      expect(log[4]?.position).toEqual(second);
      expect(log[5]?.position).toEqual(third);
      for (let i = 1; i < log.length; i++) {
        const previous = log[i - 1]?.position.prepare ?? 0n;
        expect((log[i]?.position.prepare ?? 0n) > previous).toBe(true);
      }
      expect(ids(log)).toEqual([...batch.map((e) => e.id), ...ids(log.slice(3))]);
      expect(await store.head(boundary)).toEqual(third);
    });
  });

  describe("boundaries", () => {
    it("are isolated: reads, conditions and event ids", async () => {
      const one = freshBoundary("iso");
      const two = freshBoundary("iso");
      const onePosition = await store.append({
        boundary: one,
        events: [event("T", [tag("k", "v")], "shared-id")],
      });
      // The same id in another boundary is a new event, not a retry; a match-all condition
      // from the start does not see the other boundary's event.
      const twoPosition = await store.append({
        boundary: two,
        events: [event("T", [tag("k", "v")], "shared-id"), event("T")],
        condition: { after: START, query: [] },
      });
      expect(twoPosition).toEqual(pos(1, 2));
      expect(await readAll(one)).toHaveLength(1);
      expect(await readAll(two)).toHaveLength(2);
      expect(await store.head(one)).toEqual(onePosition);
      expect(await store.head(two)).toEqual(twoPosition);
      const condition: Condition = {
        after: onePosition,
        query: [{ types: [], tags: [tag("k", "v")] }],
      };
      await store.append({ boundary: one, events: [event("T")], condition });
      expect(await readAll(one)).toHaveLength(2);
      expect(await readAll(two)).toHaveLength(2);
    });
  });

  describe("tags are a set", () => {
    it("one key may carry several values; a duplicate pair counts once", async () => {
      const boundary = freshBoundary("tags");
      const e = event("T", [tag("course", "c1"), tag("course", "c2"), tag("course", "c1")]);
      await store.append({ boundary, events: [e, event("T", [tag("course", "c3")])] });
      const [stored] = await readAll(boundary);
      expect(stored?.id).toBe(e.id);
      const sorted = [...(stored?.tags ?? [])].sort((a, b) => a.value.localeCompare(b.value));
      expect(sorted).toEqual([tag("course", "c1"), tag("course", "c2")]);
      for (const tags of [
        [tag("course", "c1")],
        [tag("course", "c2")],
        [tag("course", "c1"), tag("course", "c2")],
      ]) {
        expect(ids(await readAll(boundary, [{ types: [], tags }]))).toEqual([e.id]);
      }
      expect(
        ids(
          await readAll(boundary, [
            { types: [], tags: [tag("course", "c1"), tag("course", "c3")] },
          ]),
        ),
      ).toEqual([]);
      await expectKind(
        store.append({
          boundary,
          events: [event("T")],
          condition: { after: START, query: [{ types: [], tags: [tag("course", "c2")] }] },
        }),
        "condition_failed",
      );
    });

    it("keys and values with separators or quotes stay distinct", async () => {
      const boundary = freshBoundary("tagchars");
      const a = event("T", [tag("a:b", "c")]);
      const b = event("T", [tag("a", "b:c")]);
      const c = event("T", [tag('q"', 'v",')]);
      await store.append({ boundary, events: [a, b, c] });
      expect(ids(await readAll(boundary, [{ types: [], tags: [tag("a:b", "c")] }]))).toEqual([
        a.id,
      ]);
      expect(ids(await readAll(boundary, [{ types: [], tags: [tag("a", "b:c")] }]))).toEqual([
        b.id,
      ]);
      const stored = await readAll(boundary, [{ types: [], tags: [tag('q"', 'v",')] }]);
      expect(stored.map((e) => e.tags)).toEqual([[tag('q"', 'v",')]]);
    });

    it("tags, JSON and the date read back exactly as written", async () => {
      const boundary = freshBoundary("readback");
      const tags = [
        tag("k", ""),
        tag("", "v"),
        tag("{a,b}", '\\"x\\'),
        tag("é 😀", "[1,2]"),
        tag("null", "NULL"),
      ];
      const written = { ...event("T", tags), data: '{"a": [1, 2.50], "b": "\\u00e9"}' };
      const before = Date.now();
      await store.append({ boundary, events: [written, event("U", [])] });
      const after = Date.now();
      const [first, second] = await readAll(boundary, []);
      expect(first?.tags).toEqual(tags);
      expect(first?.data).toBe(written.data);
      expect(second?.tags).toEqual([]);
      for (const e of [first, second]) {
        const ms = e?.createdAt.getTime() ?? Number.NaN;
        expect(Number.isInteger(ms)).toBe(true);
        expect(ms).toBeGreaterThanOrEqual(before - 1_000);
        expect(ms).toBeLessThanOrEqual(after + 1_000);
      }
    });

    it("the events handed to live delivery carry the stored date, from the one-statement and the full path", async () => {
      const boundary = freshBoundary("handed-date");
      const handed: StoredEvent[] = [];
      const off = store.onCommit((b, _head, events) => {
        if (b === boundary) handed.push(...events);
      });
      try {
        // A lone append takes the one statement. The two sent while it runs wait and go together
        // into one batch, where the second's condition matches the first's event: that batch
        // takes the full transaction, which commits the first and rejects the second.
        const lone = store.append({ boundary, events: [event("T", [])] });
        const plain = store.append({ boundary, events: [event("A", [])] });
        const conflicting = store.append({
          boundary,
          events: [event("C", [])],
          condition: { after: START, query: [{ types: ["A"], tags: [] }] },
        });
        await lone;
        await plain;
        await expect(conflicting).rejects.toMatchObject({ kind: "condition_failed" });
      } finally {
        off();
      }
      const stored = await readAll(boundary);
      expect(handed.map((e) => e.id)).toEqual(stored.map((e) => e.id));
      expect(handed.map((e) => e.createdAt.getTime())).toEqual(
        stored.map((e) => e.createdAt.getTime()),
      );
    });
  });

  describe("event ids", () => {
    it("an exact retry returns the original position and writes nothing, even if its condition now fails", async () => {
      const boundary = freshBoundary("retry");
      const query: Query = [{ types: [], tags: [tag("order", "o1")] }];
      const request = {
        boundary,
        events: [event("Placed", [tag("order", "o1")]), event("Paid", [tag("order", "o1")])],
        condition: { after: START, query },
      };
      const original = await store.append(request);
      await store.append({ boundary, events: [event("Shipped", [tag("order", "o1")])] });
      const head = await store.head(boundary);
      // The condition would now fail (three matching events after START): still the original.
      expect(await store.append(request)).toEqual(original);
      expect(await store.append({ boundary, events: request.events })).toEqual(original);
      expect(await readAll(boundary)).toHaveLength(3);
      expect(await store.head(boundary)).toEqual(head);
    });

    it("a batch mixing stored and new ids fails with already_exists and writes nothing", async () => {
      const boundary = freshBoundary("mixed");
      const stored = event("T");
      const storedPosition = await store.append({ boundary, events: [stored] });
      const fresh = event("T");
      await expectKind(store.append({ boundary, events: [fresh, stored] }), "already_exists");
      await expectKind(store.append({ boundary, events: [stored, fresh] }), "already_exists");
      expect(ids(await readAll(boundary))).toEqual([stored.id]);
      expect(await store.head(boundary)).toEqual(storedPosition);
      // The new id was not taken by the failed request.
      await store.append({ boundary, events: [fresh] });
      expect(ids(await readAll(boundary))).toEqual([stored.id, fresh.id]);
    });

    it("ids stored by two different requests are not a retry", async () => {
      const boundary = freshBoundary("tworeq");
      const a = event("T");
      const b = event("T");
      await store.append({ boundary, events: [a] });
      await store.append({ boundary, events: [b] });
      await expectKind(store.append({ boundary, events: [a, b] }), "already_exists");
      expect(await readAll(boundary)).toHaveLength(2);
    });
  });

  describe("payloads", () => {
    it("JSON data and metadata come back equal as parsed JSON; empty metadata comes back empty", async () => {
      const boundary = freshBoundary("json");
      const data = `{ "username" : "john_doe", "n": 1.5e3, "list": [1, {"x": null}], "s": "é\\u00e9 \\"q\\" 😀", "t": true }`;
      const metadata = `{"user_agent": "mozilla", "nested": {"a": [false]}}`;
      await store.append({
        boundary,
        events: [
          { id: "j1", type: "T", tags: [], data, metadata },
          { id: "j2", type: "T", tags: [], data: "[]", metadata: "" },
          { id: "j3", type: "T", tags: [], data: `"text"`, metadata: "null" },
        ],
      });
      const [one, two, three] = await readAll(boundary);
      expect(JSON.parse(one?.data ?? "")).toEqual(JSON.parse(data));
      expect(JSON.parse(one?.metadata ?? "")).toEqual(JSON.parse(metadata));
      expect(JSON.parse(two?.data ?? "")).toEqual([]);
      expect(two?.metadata).toBe("");
      expect(JSON.parse(three?.data ?? "")).toBe("text");
      expect(JSON.parse(three?.metadata ?? "")).toBeNull();
      expect(one?.type).toBe("T");
    });
  });

  describe("atomicity: a failed append writes none of its events", () => {
    it("condition failure with several events", async () => {
      const boundary = freshBoundary("atomic");
      const head = await store.append({ boundary, events: [event("T", [tag("k", "v")])] });
      const attempt = [event("T"), event("T"), event("T")];
      await expectKind(
        store.append({
          boundary,
          events: attempt,
          condition: { after: START, query: [{ types: [], tags: [tag("k", "v")] }] },
        }),
        "condition_failed",
      );
      expect(await readAll(boundary)).toHaveLength(1);
      expect(await store.head(boundary)).toEqual(head);
    });

    it("one event the database refuses sinks the whole append", async () => {
      const boundary = freshBoundary("atomicdb");
      const head = await store.append({ boundary, events: [event("T")] });
      // Not JSON: validation (server/api) would refuse it; the store must still stay atomic.
      const bad: EventToAppend = {
        id: "bad",
        type: "T",
        tags: [],
        data: "{not json",
        metadata: "",
      };
      const good = event("T");
      const error = await rejection(store.append({ boundary, events: [good, bad, event("T")] }));
      expect(error.kind).not.toBe("condition_failed");
      expect(ids(await readAll(boundary))).toHaveLength(1);
      expect(await store.head(boundary)).toEqual(head);
      // The store is still usable and the good id is still free.
      const next = await store.append({ boundary, events: [good] });
      expect(next.commit > head.commit).toBe(true);
    });
  });
});
