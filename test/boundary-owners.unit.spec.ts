import { describe, expect, it } from "vitest";
import { ownerOf } from "../server/process/boundary-owners.js";
import { SLOT_ENV, SLOTS_ENV, SOCKETS_ENV, workerSlotsOf } from "../server/process/worker-slots.js";

describe("which worker owns a boundary", () => {
  it("is the same for every worker, and spreads names evenly", () => {
    const counts = [0, 0, 0, 0];
    for (let i = 0; i < 4_000; i++) {
      const owner = ownerOf(`boundary-${i}`, 4);
      expect(ownerOf(`boundary-${i}`, 4)).toBe(owner);
      counts[owner] = (counts[owner] ?? 0) + 1;
    }
    for (const n of counts) expect(n).toBeGreaterThan(850);
    expect(ownerOf("orders", 1)).toBe(0);
    // FNV-1a of the UTF-16 code units, pinned so that a change to the hash is a deliberate one.
    expect(["orders", "users", "ünïcode", ""].map((b) => ownerOf(b, 7))).toEqual([3, 1, 5, 2]);
  });

  it("comes from the slots the primary gave the worker, or there are none", () => {
    const env = (slot: string, slots: string, dir = "/tmp/x") => ({
      [SLOT_ENV]: slot,
      [SLOTS_ENV]: slots,
      [SOCKETS_ENV]: dir,
    });
    expect(workerSlotsOf(env("1", "2"))).toEqual({ slot: 1, slots: 2, dir: "/tmp/x" });
    expect(workerSlotsOf({})).toBeUndefined();
    expect(workerSlotsOf(env("2", "2"))).toBeUndefined();
    expect(workerSlotsOf(env("0", "1"))).toBeUndefined();
    expect(workerSlotsOf(env("x", "2"))).toBeUndefined();
    expect(workerSlotsOf(env("0", "2", ""))).toBeUndefined();
  });
});
