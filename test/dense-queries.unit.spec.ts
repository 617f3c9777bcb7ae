import { describe, expect, it } from "vitest";
import { DenseQueries } from "../server/store/dense-queries.js";
import type { Query } from "../server/store/types.js";

const query = (value: string): Query => [{ types: [], tags: [{ key: "k", value }] }];

describe("the memory of dense queries", () => {
  it("tells queries apart by boundary and by query", () => {
    const dense = new DenseQueries();
    dense.add("a", query("x"));
    expect(dense.has("a", query("x"))).toBe(true);
    expect(dense.has("b", query("x"))).toBe(false);
    expect(dense.has("a", query("y"))).toBe(false);
  });

  it("holds at most its limit, forgetting the oldest first", () => {
    const dense = new DenseQueries(3);
    for (const value of ["1", "2", "3", "2", "4"]) dense.add("b", query(value));
    expect(dense.size).toBe(3);
    expect(["1", "2", "3", "4"].map((v) => dense.has("b", query(v)))).toEqual([
      false,
      true,
      true,
      true,
    ]);
  });

  it("does not remember a query too long to be worth its memory", () => {
    const dense = new DenseQueries();
    dense.add("b", query("v".repeat(5_000)));
    expect(dense.size).toBe(0);
  });
});
