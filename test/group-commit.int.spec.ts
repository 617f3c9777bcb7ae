import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StoreError } from "../server/store/errors.js";
import type { EventStore } from "../server/store/event-store.js";
import { storeTargets } from "./support/databases.js";

describe.each(storeTargets)("group commit on $name", (target) => {
  let store: EventStore;
  let cleanup: () => Promise<void>;
  beforeAll(async () => {
    ({ store, cleanup } = await target.open());
  });
  afterAll(() => cleanup());

  it("a request the database refuses fails alone; the rest of its batch commits", async () => {
    const boundary = "poison";
    // A type PostgreSQL cannot store as text (api/ rejects it earlier; the store must still
    // isolate it when it reaches the database).
    const poison = "T\u0000";
    const requests = Array.from({ length: 8 }, (_, i) => ({
      boundary,
      events: [
        { id: `e${i}`, type: i === 4 ? poison : "T", tags: [], data: `{"i":${i}}`, metadata: "" },
      ],
    }));
    const results = await Promise.allSettled(requests.map((r) => store.append(r)));
    const failed = results.flatMap((r, i) => (r.status === "rejected" ? [i] : []));
    expect(failed).toEqual([4]);
    const reason = (results[4] as PromiseRejectedResult).reason;
    expect(reason).toBeInstanceOf(StoreError);
    expect((reason as StoreError).kind).toBe("internal");
    const events = await store.read({ boundary, query: [], count: 100, direction: "asc" });
    expect(events.map((e) => e.id).sort()).toEqual(["e0", "e1", "e2", "e3", "e5", "e6", "e7"]);
    const commits = events.map((e) => e.position.commit);
    expect(new Set(commits).size).toBe(7);
  });
});
