import { describe, expect, it } from "vitest";
import { refillWait } from "../server/store/append.js";

describe("the wait of a boundary's next transaction (refillWait)", () => {
  it("never waits after one or two requests, or with maxWaitMs 0", () => {
    expect(refillWait(0, 3, 5)).toEqual({ need: 0, ms: 0 });
    expect(refillWait(1, 3, 5)).toEqual({ need: 0, ms: 0 });
    expect(refillWait(2, 3, 5)).toEqual({ need: 0, ms: 0 });
    expect(refillWait(16, 3, 0)).toEqual({ need: 0, ms: 0 });
  });

  it("after three or four, waits for half as many, at most as long as the last took", () => {
    expect(refillWait(3, 1.5, 5)).toEqual({ need: 2, ms: 1.5 });
    expect(refillWait(4, 1.5, 5)).toEqual({ need: 2, ms: 1.5 });
    expect(refillWait(4, 9, 5)).toEqual({ need: 2, ms: 5 });
  });

  it("after five or more, waits for as many, at most twice as long as the last took", () => {
    expect(refillWait(5, 1.5, 5)).toEqual({ need: 5, ms: 3 });
    expect(refillWait(16, 1.6, 5)).toEqual({ need: 16, ms: 3.2 });
    expect(refillWait(64, 4, 5)).toEqual({ need: 64, ms: 5 });
  });
});
