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

  it("a request that conflicts with an earlier request of the same batch fails; the earlier commits", async () => {
    const boundary = "in_batch";
    const tag = [{ key: "user", value: "ada" }];
    const claim = (id: string) => ({
      boundary,
      events: [{ id, type: "Registered", tags: tag, data: "{}", metadata: "" }],
      condition: { after: { commit: 0n, prepare: 0n }, query: [{ types: [], tags: tag }] },
    });
    // A large first append holds the boundary's transaction, so the two claims queue behind it
    // and go together into the next one, in arrival order.
    const big = store.append({
      boundary,
      events: Array.from({ length: 2_000 }, (_, i) => ({
        id: `big${i}`,
        type: "Filler",
        tags: [],
        data: "{}",
        metadata: "",
      })),
    });
    const first = store.append(claim("claim1"));
    const second = store.append(claim("claim2"));
    const [, a, b] = await Promise.allSettled([big, first, second]);
    expect(a.status).toBe("fulfilled");
    expect(b.status).toBe("rejected");
    expect(((b as PromiseRejectedResult).reason as StoreError).kind).toBe("condition_failed");
    const claims = await store.read({
      boundary,
      query: [{ types: [], tags: tag }],
      count: 10,
      direction: "asc",
    });
    expect(claims.map((e) => e.id)).toEqual(["claim1"]);
  });
});
