import { describe, expect, it } from "vitest";
import { HandedOver } from "../server/broker/handed-over.js";
import type { Position, StoredEvent } from "../server/store/types.js";

function commit(c: bigint, first: bigint, n: number, dataBytes = 10): StoredEvent[] {
  return Array.from({ length: n }, (_, i) => ({
    boundary: "b",
    id: `e${first + BigInt(i)}`,
    type: "T",
    tags: [],
    data: "x".repeat(dataBytes),
    metadata: "",
    position: { commit: c, prepare: first + BigInt(i) },
    createdAt: new Date(0),
  }));
}

const at = (commit: bigint, prepare: bigint): Position => ({ commit, prepare });
const prepares = (events: StoredEvent[] | undefined) => events?.map((e) => e.position.prepare);

describe("HandedOver", () => {
  it("gives the events that follow the tail exactly, at most `max`, and lets go of older ones", () => {
    const h = new HandedOver(1_000_000);
    h.add("b", commit(1n, 1n, 2));
    h.add("b", commit(2n, 3n, 3));
    expect(prepares(h.take("b", at(0n, 0n), 4))).toEqual([1n, 2n, 3n, 4n]);
    expect(prepares(h.take("b", at(2n, 4n), 4))).toEqual([5n]);
    expect(h.take("b", at(2n, 5n), 4)).toEqual([]);
    expect(h.heldBytes).toBe(0);
  });

  it("takes a commit of 300,000 events (more than a call can take as arguments)", () => {
    const h = new HandedOver(1_000_000_000);
    h.add("b", commit(1n, 1n, 300_000, 1));
    const taken = h.take("b", at(0n, 0n), 300_000);
    expect(taken).toHaveLength(300_000);
    expect(taken?.at(-1)?.position.prepare).toBe(300_000n);
  });

  it("drops what the tail already passed (published from the log) and goes on from memory", () => {
    const h = new HandedOver(1_000_000);
    h.add("b", commit(1n, 1n, 3));
    h.add("b", commit(2n, 4n, 2));
    expect(prepares(h.take("b", at(1n, 3n), 10))).toEqual([4n, 5n]);
  });

  it("says the log must be read when the next event is not in memory (another process's commit)", () => {
    const h = new HandedOver(1_000_000);
    h.add("b", commit(1n, 1n, 1));
    h.add("b", commit(3n, 3n, 1)); // commit 2 (prepare 2) was another process's
    expect(prepares(h.take("b", at(0n, 0n), 10))).toEqual([1n]);
    expect(h.take("b", at(1n, 1n), 10)).toBeUndefined();
    // Once the log was read past it, memory serves again.
    h.add("b", commit(4n, 4n, 1));
    expect(prepares(h.take("b", at(3n, 3n), 10))).toEqual([4n]);
  });

  it("keeps within its bytes: past them it lets the boundary's events go and asks for one read", () => {
    // Room for two of these events (about 360 bytes each, overhead counted).
    const h = new HandedOver(800);
    h.add("b", commit(1n, 1n, 1, 100));
    h.add("b", commit(2n, 2n, 1, 100));
    const two = h.heldBytes;
    h.add("b", commit(3n, 3n, 1, 100)); // does not fit: 1 and 2 go, 3 is kept
    expect(h.heldBytes).toBeLessThan(two);
    expect(h.take("b", at(0n, 0n), 10)).toBeUndefined();
    // The read that follows went to the head (3); memory serves again after it.
    h.add("b", commit(4n, 4n, 1, 100));
    expect(h.heldBytes).toBeLessThanOrEqual(800);
    expect(prepares(h.take("b", at(3n, 3n), 10))).toEqual([4n]);
    expect(h.heldBytes).toBe(0);
  });

  it("drops a commit larger than all its bytes", () => {
    const h = new HandedOver(800);
    h.add("b", commit(1n, 1n, 1, 2_000));
    expect(h.heldBytes).toBe(0);
    expect(h.take("b", at(0n, 0n), 10)).toBeUndefined();
    expect(h.take("b", at(1n, 1n), 10)).toEqual([]);
  });

  it("gives [] when memory holds nothing after the tail, per boundary", () => {
    const h = new HandedOver(1_000_000);
    expect(h.take("b", at(0n, 0n), 10)).toEqual([]);
    h.add("a", commit(1n, 1n, 1));
    expect(h.take("b", at(0n, 0n), 10)).toEqual([]);
    h.drop("a");
    expect(h.heldBytes).toBe(0);
  });
});
