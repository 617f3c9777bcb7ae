import type { CompiledQuery, Kysely } from "kysely";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { checkSql } from "../server/store/condition-check.js";
import type { EventStore } from "../server/store/event-store.js";
import { readsSparse, selectEvents, selectSparseEvents } from "../server/store/query-sql.js";
import type { Database } from "../server/store/schema.js";
import type {
  Condition,
  EventToAppend,
  Position,
  Query,
  ReadRequest,
} from "../server/store/types.js";
import { storeTargets } from "./support/databases.js";

/**
 * Every query shape the store runs against orisun_events must be served by an index: with
 * sequential scans disabled, no plan may fall back to one, and every index scan on the table
 * must have an index condition (not a full walk of an index with a filter).
 */

const postgres = storeTargets.find((t) => t.name === "postgres");
if (!postgres) throw new Error("no postgres target");

/** The planner's read, or the sparse read that tag queries try first (read.ts). */
const readQuery = (
  db: Kysely<Database>,
  request: ReadRequest,
  form: "planner's" | "sparse" = "planner's",
): CompiledQuery =>
  (form === "sparse" ? selectSparseEvents(request) : selectEvents(request)).compile(db);

interface PlanNode {
  readonly "Node Type": string;
  readonly "Relation Name"?: string;
  readonly "Index Name"?: string;
  readonly "Index Cond"?: string;
  readonly "Actual Rows"?: number;
  readonly Plans?: readonly PlanNode[];
}

function nodes(plan: PlanNode): PlanNode[] {
  return [plan, ...(plan.Plans ?? []).flatMap(nodes)];
}

type Statement = Pick<CompiledQuery, "sql" | "parameters">;

const INDEXES = new Set(["orisun_events_pkey", "orisun_events_type_idx", "orisun_events_tags_idx"]);

describe("indexes serve every query shape (PostgreSQL)", () => {
  let store: EventStore;
  let cleanup: () => Promise<void>;
  let client: pg.PoolClient;
  let middle: Position;
  const boundary = "big";

  beforeAll(async () => {
    ({ store, cleanup } = await postgres.open());
    const make = (prefix: string, n: number, offset: number): EventToAppend[] =>
      Array.from({ length: n }, (_, k) => {
        const i = k + offset;
        return {
          id: `${prefix}${i}`,
          type: `Type${i % 20}`,
          tags: [
            { key: "entity", value: `e${i % 500}` },
            { key: "kind", value: `k${i % 7}` },
          ],
          data: `{"i":${i}}`,
          metadata: "",
        };
      });
    for (let round = 0; round < 4; round++) {
      const last = await store.append({ boundary, events: make("b", 1500, round * 1500) });
      if (round === 1) middle = last;
    }
    await store.append({ boundary: "noise", events: make("n", 4000, 0) });
    const pool = store.database.pool;
    if (!pool) throw new Error("no pg pool");
    client = await pool.connect();
    await client.query("ANALYZE orisun_events");
    await client.query("SET enable_seqscan = off");
  });
  afterAll(async () => {
    client?.release();
    await cleanup();
  });

  /** orisun_violated's fenced check, as it runs it (condition-check.ts). */
  async function conditionQuery(boundary: string, { after, query }: Condition): Promise<Statement> {
    return {
      sql: await checkSql(client, query),
      parameters: [boundary, after.commit.toString(), after.prepare.toString()],
    };
  }

  async function explain(query: Statement): Promise<PlanNode> {
    const result = await client.query<{ "QUERY PLAN": [{ Plan: PlanNode }] }>(
      `EXPLAIN (FORMAT JSON) ${query.sql}`,
      query.parameters as unknown[],
    );
    const plan = result.rows[0]?.["QUERY PLAN"][0]?.Plan;
    if (!plan) throw new Error("no plan");
    return plan;
  }

  function expectIndexed(plan: PlanNode): void {
    const all = nodes(plan);
    const text = JSON.stringify(plan);
    expect(
      all.filter((n) => n["Node Type"] === "Seq Scan"),
      text,
    ).toEqual([]);
    const scans = all.filter((n) => n["Relation Name"] === "orisun_events" || n["Index Name"]);
    // The table is reached, and only through its indexes, each with a condition.
    expect(scans.length, text).toBeGreaterThan(0);
    for (const scan of scans) {
      // Reached through a bitmap of an index, or by the ctids the sparse read's probe found.
      if (scan["Node Type"] === "Bitmap Heap Scan" || scan["Node Type"] === "Tid Scan") continue;
      expect(INDEXES.has(scan["Index Name"] ?? ""), text).toBe(true);
      expect(scan["Index Cond"], text).toBeTruthy();
    }
  }

  const entity = { key: "entity", value: "e42" };
  const kind = { key: "kind", value: "k3" };
  const shapes: readonly { name: string; query: Query }[] = [
    { name: "match-all", query: [] },
    { name: "by type", query: [{ types: ["Type3"], tags: [] }] },
    { name: "by two types", query: [{ types: ["Type3", "Type7"], tags: [] }] },
    { name: "by tag", query: [{ types: [], tags: [entity] }] },
    { name: "by two tags", query: [{ types: [], tags: [entity, kind] }] },
    { name: "by type and tag", query: [{ types: ["Type2"], tags: [entity] }] },
    {
      name: "two criteria",
      query: [
        { types: ["Type3"], tags: [] },
        { types: [], tags: [entity] },
      ],
    },
  ];

  it("a condition on a tag nobody has used yet goes through the tag index, not a walk of the log", async () => {
    // The commonest DCB check (a new entity, a free username) matches nothing; a primary-key walk
    // filtered by tag would read the whole boundary to prove it.
    await client.query("SET enable_seqscan = on");
    try {
      const query: Query = [{ types: [], tags: [{ key: "entity", value: "never-used" }] }];
      const start = { commit: 0n, prepare: 0n };
      const plan = await explain(await conditionQuery(boundary, { after: start, query }));
      const used = nodes(plan).map((n) => n["Index Name"]);
      expect(used, JSON.stringify(plan)).toContain("orisun_events_tags_idx");
      expect(used, JSON.stringify(plan)).not.toContain("orisun_events_pkey");
    } finally {
      await client.query("SET enable_seqscan = off");
    }
  });

  it("the append function's walk after a recent marker reads those events on the primary key, on a boundary the statistics have not seen", async () => {
    // Appended after the ANALYZE above: PostgreSQL estimates "fresh" at one row. With that
    // estimate the fenced check was read through the (boundary, event_id) index on the bench's
    // boundaries (README, "One round trip per append"); whether it is here depends on the
    // planner's ties. The walk, with enable_sort off, has only the primary key to use.
    const fresh = "fresh";
    const events = (prefix: string, n: number): EventToAppend[] =>
      Array.from({ length: n }, (_, i) => ({
        id: `${prefix}${i}`,
        type: "T",
        tags: [{ key: "kind", value: "k1" }],
        data: "{}",
        metadata: "",
      }));
    await store.append({ boundary: fresh, events: events("f", 3_000) });
    const marker = await store.append({ boundary: fresh, events: events("g", 1) });
    await store.append({ boundary: fresh, events: events("h", 10) });
    // As orisun_violated runs it (condition-check.ts).
    await client.query("SET enable_sort = off");
    try {
      const text = await checkSql(
        client,
        [{ types: [], tags: [{ key: "entity", value: "none" }] }],
        "walk",
      );
      const result = await client.query<{ "QUERY PLAN": [{ Plan: PlanNode }] }>(
        `EXPLAIN (ANALYZE, FORMAT JSON) ${text}`,
        [fresh, marker.commit, marker.prepare],
      );
      const plan = result.rows[0]?.["QUERY PLAN"][0]?.Plan;
      if (!plan) throw new Error("no plan");
      const scans = nodes(plan).filter((n) => n["Index Name"] || n["Relation Name"]);
      expect(
        scans.map((n) => n["Index Name"]),
        JSON.stringify(plan),
      ).toEqual(["orisun_events_pkey"]);
      // The ten events after the marker, not the boundary.
      expect(scans[0]?.["Actual Rows"], JSON.stringify(plan)).toBe(10);
      const { rows } = await client.query(text, [fresh, marker.commit, marker.prepare]);
      expect(rows[0]).toEqual({ coalesce: false, count: "10" });
    } finally {
      await client.query("RESET enable_sort");
    }
  });

  it("the check itself finds a Seq Scan when one is used", async () => {
    await client.query("SET enable_seqscan = on");
    try {
      const plan = await explain({ sql: "SELECT * FROM orisun_events", parameters: [] });
      expect(nodes(plan).some((n) => n["Node Type"] === "Seq Scan")).toBe(true);
    } finally {
      await client.query("SET enable_seqscan = off");
    }
  });

  describe.each(shapes)("$name", ({ query }) => {
    it("condition check after a position", async () => {
      expectIndexed(await explain(await conditionQuery(boundary, { after: middle, query })));
    });

    it("condition check from the start", async () => {
      const start = { commit: 0n, prepare: 0n };
      expectIndexed(await explain(await conditionQuery(boundary, { after: start, query })));
    });

    const forms = readsSparse(query)
      ? (["planner's", "sparse"] as const)
      : (["planner's"] as const);
    for (const direction of ["asc", "desc"] as const) {
      it.each(forms)(`read ${direction} from the start or end (%s)`, async (form) => {
        expectIndexed(
          await explain(
            readQuery(store.database.db, { boundary, query, count: 100, direction }, form),
          ),
        );
      });

      it.each(forms)(`read ${direction} from a position (%s)`, async (form) => {
        expectIndexed(
          await explain(
            readQuery(
              store.database.db,
              { boundary, query, from: middle, count: 100, direction },
              form,
            ),
          ),
        );
      });

      it.each(forms)(
        `read ${direction} bounded by a head (GetEvents, a decision read) (%s)`,
        async (form) => {
          const from = direction === "asc" ? { commit: 1n, prepare: 1n } : undefined;
          expectIndexed(
            await explain(
              readQuery(
                store.database.db,
                { boundary, query, from, until: middle, count: 101, direction },
                form,
              ),
            ),
          );
        },
      );
    }
  });

  it("the compiled queries return what the store returns", async () => {
    // Guards the copies above against drifting from read.ts.
    const request: ReadRequest = {
      boundary,
      query: shapes[6]?.query ?? [],
      from: middle,
      count: 50,
      direction: "desc",
    };
    const compiled = readQuery(store.database.db, request);
    const mine = await client.query<{ event_id: string }>(
      compiled.sql,
      compiled.parameters as unknown[],
    );
    const theirs = await store.read(request);
    expect(mine.rows.map((r) => r.event_id)).toEqual(theirs.map((e) => e.id));
    expect(theirs).toHaveLength(50);

    // A tag query on few events: the sparse read.
    const sparse: ReadRequest = { ...request, query: shapes[3]?.query ?? [], count: 5 };
    const compiledSparse = readQuery(store.database.db, sparse, "sparse");
    const sparseRows = await client.query<{ event_id: string; dense: boolean }>(
      compiledSparse.sql,
      compiledSparse.parameters as unknown[],
    );
    expect(sparseRows.rows[0]?.dense).toBe(false);
    const read = await store.read(sparse);
    expect(sparseRows.rows.map((r) => r.event_id)).toEqual(read.map((e) => e.id));
    expect(read).toHaveLength(5);
  });
});
