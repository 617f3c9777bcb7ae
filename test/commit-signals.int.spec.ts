import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { EventStore } from "../server/store/event-store.js";
import { dropSchema, freshSchema, openPostgresStore } from "./support/databases.js";

// Commits wake other processes through NOTIFY; deployments in other schemas of the same
// database must not be woken (nor, by the same rule, share advisory locks: session-locks spec).
describe("commit signals across processes on one database", () => {
  const schemaA = freshSchema("siga");
  const schemaB = freshSchema("sigb");
  let writer: EventStore;
  let sameSchema: EventStore;
  let writerB: EventStore;
  let otherSchema: EventStore;

  beforeAll(async () => {
    [writer, sameSchema, writerB, otherSchema] = await Promise.all([
      openPostgresStore(schemaA, 2),
      openPostgresStore(schemaA, 2),
      openPostgresStore(schemaB, 2),
      openPostgresStore(schemaB, 2),
    ]);
  });
  afterAll(async () => {
    await Promise.all([writer, sameSchema, writerB, otherSchema].map((s) => s?.close()));
    await Promise.all([dropSchema(schemaA), dropSchema(schemaB)]);
  });

  /** Appends from `from` until `to` (another process) has heard of it: its LISTEN is up. */
  async function appendUntilHeard(from: EventStore, heard: Array<string | undefined>) {
    let i = 0;
    for (; i < 100 && !heard.includes("orders"); i++) {
      await from.append({
        boundary: "orders",
        events: [
          {
            id: `${from === writer ? "a" : "b"}${i}`,
            type: "Placed",
            tags: [],
            data: "{}",
            metadata: "",
          },
        ],
      });
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(heard).toContain("orders");
    return i;
  }

  it("reach the other processes of the same schema with the boundary, and not another schema's", async () => {
    const same: Array<string | undefined> = [];
    const other: Array<string | undefined> = [];
    const own: Array<string | undefined> = [];
    sameSchema.signals.on((b) => same.push(b));
    otherSchema.signals.on((b) => other.push(b));
    writer.signals.on((b) => own.push(b));
    const appended = await appendUntilHeard(writer, same);
    await new Promise((r) => setTimeout(r, 300));
    expect(other.filter((b) => b !== undefined)).toEqual([]);
    // The writer heard each of its commits once, at commit; their NOTIFY echo is ignored.
    expect(own.filter((b) => b === "orders")).toHaveLength(appended);
    // The other schema's listener is alive: its own deployment's commits do reach it.
    await appendUntilHeard(writerB, other);
  });
});
