import { describe, expect, it } from "vitest";
import { RecentCommits, type RecentEvent } from "../server/store/recent-commits.js";
import type { Position, Query } from "../server/store/types.js";

const at = (n: number): Position => ({ commit: BigInt(n), prepare: BigInt(n) });
const event = (n: number, owner: string): RecentEvent => ({
  position: at(n),
  type: "T",
  tags: [{ key: "owner", value: owner }],
});
const owner = (value: string): Query => [{ types: [], tags: [{ key: "owner", value }] }];

describe("recent commits, for condition checks in memory", () => {
  it("answers for markers inside the stretch it holds, when the head is where it left it", () => {
    const recent = new RecentCommits(100);
    recent.committed("b", at(10), at(12), [event(11, "a"), event(12, "b")]);
    expect(recent.violated("b", at(12), at(10), owner("a"))).toBe(true);
    expect(recent.violated("b", at(12), at(11), owner("a"))).toBe(false);
    expect(recent.violated("b", at(12), at(11), owner("b"))).toBe(true);
    expect(recent.violated("b", at(12), at(12), owner("b"))).toBe(false);
    expect(recent.violated("b", at(12), at(10), [])).toBe(true);
  });

  it("leaves markers before the stretch, and other boundaries, to the database", () => {
    const recent = new RecentCommits(100);
    recent.committed("b", at(10), at(11), [event(11, "a")]);
    expect(recent.violated("b", at(11), at(9), owner("z"))).toBeUndefined();
    expect(recent.violated("other", at(11), at(10), owner("z"))).toBeUndefined();
  });

  it("drops the stretch once the head moved without it (another process appended)", () => {
    const recent = new RecentCommits(100);
    recent.committed("b", at(10), at(11), [event(11, "a")]);
    expect(recent.violated("b", at(12), at(11), owner("a"))).toBeUndefined();
    // Gone for good: the event at 12 is not held, so even the old head is not trusted again.
    expect(recent.violated("b", at(11), at(11), owner("a"))).toBeUndefined();
  });

  it("starts a new stretch when a commit does not continue the held one", () => {
    const recent = new RecentCommits(100);
    recent.committed("b", at(10), at(11), [event(11, "a")]);
    recent.committed("b", at(20), at(21), [event(21, "b")]);
    expect(recent.violated("b", at(21), at(11), owner("a"))).toBeUndefined();
    expect(recent.violated("b", at(21), at(20), owner("b"))).toBe(true);
  });

  it("keeps at most its limit, and answers only after what it dropped", () => {
    const recent = new RecentCommits(3);
    recent.committed("b", at(0), at(2), [event(1, "a"), event(2, "b")]);
    recent.committed("b", at(2), at(4), [event(3, "c"), event(4, "d")]);
    expect(recent.violated("b", at(4), at(0), owner("a"))).toBeUndefined();
    expect(recent.violated("b", at(4), at(1), owner("b"))).toBe(true);
    expect(recent.violated("b", at(4), at(2), owner("b"))).toBe(false);
  });

  it("forgets a boundary whose last transaction had no known outcome", () => {
    const recent = new RecentCommits(100);
    recent.committed("b", at(0), at(1), [event(1, "a")]);
    recent.forget("b");
    expect(recent.violated("b", at(1), at(0), owner("a"))).toBeUndefined();
  });
});
