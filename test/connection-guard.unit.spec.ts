import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { rateLimited } from "../server/http/connection-guard.js";

describe("rateLimited warnings", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("passes the first, counts the rest of the 10 s window in one line, then goes quiet", () => {
    const lines: { fields: Record<string, unknown>; message: string }[] = [];
    const warn = rateLimited((fields, message) => lines.push({ fields, message }));
    for (let i = 0; i < 200; i++) warn({ address: `10.0.0.${i % 4}` }, "refused");
    expect(lines).toEqual([{ fields: { address: "10.0.0.0" }, message: "refused" }]);
    vi.advanceTimersByTime(10_000);
    expect(lines).toHaveLength(2);
    expect(lines[1]).toEqual({
      fields: { address: "10.0.0.3", heldBack: 199 },
      message: "refused (and 199 more like it)",
    });
    vi.advanceTimersByTime(60_000);
    expect(lines).toHaveLength(2);
    warn({ address: "10.0.0.9" }, "refused");
    expect(lines).toHaveLength(3);
  });
});
