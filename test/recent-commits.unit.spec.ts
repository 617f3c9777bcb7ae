import { describe, expect, it } from "vitest";
import { estimateBytes, RecentCommits, type RecentEvent } from "../server/store/recent-commits.js";
import type { Position, Query } from "../server/store/types.js";

const at = (n: number): Position => ({ commit: BigInt(n), prepare: BigInt(n) });
const event = (n: number, owner: string): RecentEvent => ({
  position: at(n),
  type: "T",
  tags: [{ key: "owner", value: owner }],
});
const owner = (value: string): Query => [{ types: [], tags: [{ key: "owner", value }] }];
const limits = (maxEvents: number, maxBytes = 64 * 1024 * 1024, idleMs = 60_000) => ({
  maxEvents,
  maxBytes,
  idleMs,
});

describe("recent commits, for condition checks in memory", () => {
  it("answers for markers inside the stretch it holds, when the head is where it left it", () => {
    const recent = new RecentCommits(limits(100));
    recent.committed("b", at(10), at(12), [event(11, "a"), event(12, "b")]);
    expect(recent.violated("b", at(12), at(10), owner("a"))).toBe(true);
    expect(recent.violated("b", at(12), at(11), owner("a"))).toBe(false);
    expect(recent.violated("b", at(12), at(11), owner("b"))).toBe(true);
    expect(recent.violated("b", at(12), at(12), owner("b"))).toBe(false);
    expect(recent.violated("b", at(12), at(10), [])).toBe(true);
  });

  it("leaves markers before the stretch, and other boundaries, to the database", () => {
    const recent = new RecentCommits(limits(100));
    recent.committed("b", at(10), at(11), [event(11, "a")]);
    expect(recent.violated("b", at(11), at(9), owner("z"))).toBeUndefined();
    expect(recent.violated("other", at(11), at(10), owner("z"))).toBeUndefined();
  });

  it("drops the stretch once the head moved without it (another process appended)", () => {
    const recent = new RecentCommits(limits(100));
    recent.committed("b", at(10), at(11), [event(11, "a")]);
    expect(recent.violated("b", at(12), at(11), owner("a"))).toBeUndefined();
    // Gone for good: the event at 12 is not held, so even the old head is not trusted again.
    expect(recent.violated("b", at(11), at(11), owner("a"))).toBeUndefined();
  });

  it("starts a new stretch when a commit does not continue the held one", () => {
    const recent = new RecentCommits(limits(100));
    recent.committed("b", at(10), at(11), [event(11, "a")]);
    recent.committed("b", at(20), at(21), [event(21, "b")]);
    expect(recent.violated("b", at(21), at(11), owner("a"))).toBeUndefined();
    expect(recent.violated("b", at(21), at(20), owner("b"))).toBe(true);
  });

  it("keeps at most its limit, and answers only after what it dropped", () => {
    const recent = new RecentCommits(limits(3));
    recent.committed("b", at(0), at(2), [event(1, "a"), event(2, "b")]);
    recent.committed("b", at(2), at(4), [event(3, "c"), event(4, "d")]);
    expect(recent.violated("b", at(4), at(0), owner("a"))).toBeUndefined();
    expect(recent.violated("b", at(4), at(1), owner("b"))).toBe(true);
    expect(recent.violated("b", at(4), at(2), owner("b"))).toBe(false);
  });

  it("slides over many commits at its limit: exact answers and constant bytes", () => {
    const recent = new RecentCommits(limits(5));
    let full = 0;
    for (let n = 1; n <= 100; n++) {
      recent.committed("b", at(n - 1), at(n), [event(n, `o${n % 3}`)]);
      if (n < 6) continue;
      full ||= recent.bytes;
      expect(recent.bytes).toBe(full);
      // Held: events n-4..n, so a marker at n-5 is the oldest it answers for.
      expect(recent.violated("b", at(n), at(n - 6), owner("x"))).toBeUndefined();
      expect(recent.violated("b", at(n), at(n - 5), owner(`o${(n - 4) % 3}`))).toBe(true);
      expect(recent.violated("b", at(n), at(n - 4), owner(`o${(n - 4) % 3}`))).toBe(
        [n - 3, n - 2, n - 1, n].some((k) => k % 3 === (n - 4) % 3),
      );
      expect(recent.violated("b", at(n), at(n - 5), owner("x"))).toBe(false);
    }
  });

  it("forgets a boundary whose last transaction had no known outcome", () => {
    const recent = new RecentCommits(limits(100));
    recent.committed("b", at(0), at(1), [event(1, "a")]);
    recent.forget("b");
    expect(recent.violated("b", at(1), at(0), owner("a"))).toBeUndefined();
  });

  it("keeps the estimated bytes of all boundaries within one budget, however many commit", () => {
    const budget = 256 * 1024;
    const recent = new RecentCommits(limits(10_000, budget));
    const tagged = (n: number): RecentEvent => ({
      position: at(n),
      type: `Type${n % 7}`,
      tags: Array.from({ length: 16 }, (_, t) => ({ key: `k${t}`, value: `${n}`.padEnd(40, "v") })),
    });
    let held = 0;
    for (let b = 0; b < 2_000; b++) {
      recent.committed(`b${b}`, at(0), at(3), [tagged(1), tagged(2), tagged(3)]);
      expect(recent.bytes).toBeLessThanOrEqual(budget);
      held = Math.max(held, recent.bytes);
    }
    // It is used, not just emptied: most of the budget holds recent boundaries.
    expect(held).toBeGreaterThan(budget / 2);
    expect(recent.size).toBeLessThan(2_000);
    // The latest boundary is still answered in memory; the first long ago fell back to the database.
    expect(recent.violated("b1999", at(3), at(0), [])).toBe(true);
    expect(recent.violated("b0", at(3), at(0), [])).toBeUndefined();
  });

  it("estimates an event from its position, type and tags strings", () => {
    const small = estimateBytes({ position: at(1), type: "T", tags: [] });
    const tagged = estimateBytes({
      position: at(1),
      type: "T",
      tags: [{ key: "owner", value: "x".repeat(1_000) }],
    });
    expect(small).toBeGreaterThanOrEqual(200);
    expect(tagged - small).toBeGreaterThanOrEqual(1_000 + "owner".length);
  });

  it("evicts the least recently used boundary first", () => {
    const one = estimateBytes(event(1, "a"));
    // Room for three windows of one event each, not four.
    const recent = new RecentCommits(limits(100, 3 * (one + 256) + 10));
    recent.committed("a", at(0), at(1), [event(1, "a")]);
    recent.committed("b", at(0), at(1), [event(1, "a")]);
    recent.committed("c", at(0), at(1), [event(1, "a")]);
    // A check uses "a": "b" is now the least recently used.
    expect(recent.violated("a", at(1), at(0), owner("a"))).toBe(true);
    recent.committed("d", at(0), at(1), [event(1, "a")]);
    expect(recent.violated("b", at(1), at(0), owner("a"))).toBeUndefined();
    expect(recent.violated("a", at(1), at(0), owner("a"))).toBe(true);
    expect(recent.violated("c", at(1), at(0), owner("a"))).toBe(true);
    expect(recent.violated("d", at(1), at(0), owner("a"))).toBe(true);
  });

  it("keeps the newest events of a boundary that alone exceeds the budget", () => {
    const one = estimateBytes(event(1, "a"));
    const recent = new RecentCommits(limits(100, 256 + 2 * one));
    recent.committed("b", at(0), at(4), [
      event(1, "a"),
      event(2, "b"),
      event(3, "c"),
      event(4, "d"),
    ]);
    expect(recent.bytes).toBeLessThanOrEqual(256 + 2 * one);
    expect(recent.violated("b", at(4), at(1), owner("b"))).toBeUndefined();
    expect(recent.violated("b", at(4), at(2), owner("c"))).toBe(true);
    expect(recent.violated("b", at(4), at(3), owner("c"))).toBe(false);
  });

  it("holds nothing with a budget of 0, so every check goes to the database", () => {
    const recent = new RecentCommits(limits(100, 0));
    recent.committed("b", at(0), at(1), [event(1, "a")]);
    expect(recent.bytes).toBe(0);
    expect(recent.violated("b", at(1), at(0), owner("a"))).toBeUndefined();
  });

  it("drops the windows of boundaries idle longer than the idle time", () => {
    let now = 0;
    const recent = new RecentCommits(limits(100, 1024 * 1024, 1_000), () => now);
    recent.committed("idle", at(0), at(1), [event(1, "a")]);
    now = 500;
    recent.committed("busy", at(0), at(1), [event(1, "a")]);
    now = 1_200;
    recent.committed("busy", at(1), at(2), [event(2, "a")]);
    expect(recent.size).toBe(1);
    expect(recent.violated("idle", at(1), at(0), owner("a"))).toBeUndefined();
    expect(recent.violated("busy", at(2), at(0), owner("a"))).toBe(true);
  });
});
