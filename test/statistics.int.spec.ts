import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { EventStore } from "../server/store/event-store.js";
import { selectEvents } from "../server/store/query-sql.js";
import {
  dropSchema,
  freshDataDir,
  freshSchema,
  GROUP_COMMIT,
  PG_URL,
} from "./support/databases.js";

// The planner picks between the primary key and the tag index by its row estimates. After a
// bulk load they are stale unless something analyzes the table; this machine's PostgreSQL runs
// with autovacuum off, which is where a page read from the middle of a fresh million-event
// boundary took 606 ms (bitmap scan of half the boundary, then a sort) instead of a few ms.
describe("planner statistics after a bulk load", () => {
  const schema = freshSchema("stats");
  let store: EventStore;

  beforeAll(async () => {
    store = await EventStore.open({
      url: PG_URL,
      schema,
      poolSize: 4,
      dataDir: freshDataDir(),
      onIdleError: () => {},
      groupCommit: GROUP_COMMIT,
      statistics: { minEvents: 5_000, minIntervalMs: 0 },
    });
  });
  afterAll(async () => {
    await store?.close();
    await dropSchema(schema);
  });

  const pool = () => {
    const raw = store.database.pool;
    if (!raw) throw new Error("a PostgreSQL store has a raw pool");
    return raw;
  };
  const lastAnalyze = async () => {
    const { rows } = await pool().query<{ at: Date | null; n: string }>(
      `SELECT greatest(last_analyze, last_autoanalyze) AS at, n_mod_since_analyze AS n
       FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'orisun_events'`,
      [schema],
    );
    return rows[0]?.at ?? null;
  };

  it("are refreshed by the store itself, so a page from the middle is read on the primary key", async () => {
    expect(await lastAnalyze()).toBeNull();
    for (let batch = 0; batch < 30; batch++) {
      await store.append({
        boundary: "big",
        events: Array.from({ length: 2_000 }, (_, i) => ({
          id: `e${batch}-${i}`,
          type: `Type${i % 10}`,
          tags: [{ key: "entity", value: `e${i % 500}` }],
          data: `{"i":${i}}`,
          metadata: "",
        })),
      });
    }
    await expect.poll(lastAnalyze, { timeout: 20_000 }).not.toBeNull();

    const middle = selectEvents({
      boundary: "big",
      query: [],
      from: { commit: 15n, prepare: 30_000n },
      count: 1_000,
      direction: "asc",
    }).compile(store.database.db);
    const { rows } = await pool().query(
      `EXPLAIN (FORMAT JSON) ${middle.sql}`,
      middle.parameters as unknown[],
    );
    const plan = JSON.stringify(rows[0]["QUERY PLAN"]);
    expect(plan).toContain('"Index Name":"orisun_events_pkey"');
    expect(plan).not.toContain('"Node Type":"Sort"');
  });
});
