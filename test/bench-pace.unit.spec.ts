import { describe, expect, it } from "vitest";
import { paceOf } from "../bench/pace.js";

describe("the bench's paced appends (paceOf, AB_RATE)", () => {
  it("sends at once without a rate", () => {
    expect(paceOf(undefined, 16, 3)).toEqual({ offsetMs: 0, intervalMs: 0 });
  });

  it("gives every loop its share of the rate, their sends spread evenly over one interval", () => {
    const paces = Array.from({ length: 16 }, (_, c) => paceOf(2_000, 16, c));
    // 16 loops at 2,000 appends/s together: each every 8 ms, one loop's send every 0.5 ms.
    expect(paces.every((p) => p.intervalMs === 8)).toBe(true);
    expect(paces.map((p) => p.offsetMs)).toEqual(Array.from({ length: 16 }, (_, c) => c * 0.5));
    // Over one second the loops send exactly the rate.
    const sends = paces.reduce((n, p) => n + Math.ceil((1_000 - p.offsetMs) / p.intervalMs), 0);
    expect(sends).toBe(2_000);
  });
});
