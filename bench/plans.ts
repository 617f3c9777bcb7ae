import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CompiledQuery } from "kysely";
import pg from "pg";
import { checkSql } from "../server/store/condition-check.js";
import { EventStore } from "../server/store/event-store.js";
import { readsSparse, selectEvents, selectSparseEvents } from "../server/store/query-sql.js";
import type { Condition, Query, ReadRequest, Tag } from "../server/store/types.js";
import { median } from "./workloads.js";

export interface PlanTiming {
  readonly shape: string;
  /** Median execution time reported by EXPLAIN ANALYZE. */
  readonly ms: number;
  /** The plan's nodes, outermost first, with the index each scan uses. */
  readonly plan: string;
}

/** A statement as EXPLAIN takes it: the store's compiled reads, and its checks. */
type Statement = Pick<CompiledQuery, "sql" | "parameters">;

const ENTITIES = 200_000;
const RUNS = 5;
const BOUNDARY = "plans";

const tag = (key: string, value: string): Tag => ({ key, value });
const criterion = (types: string[], tags: Tag[]): Query => [{ types, tags }];

/**
 * The planner's choices for every read and condition shape at `events` events: a boundary loaded
 * in SQL (20 types; an `entity` tag with 200k values, 5 events each at 1M; a `kind` tag with 7
 * values, 14% each; an `id` tag of each event's own; a `rare` tag on 5 events), analyzed, each
 * shape timed with EXPLAIN ANALYZE. The store's own SQL (query-sql.ts) is what runs: for a tag
 * query, the statement it settles on (read.ts). The schema is dropped afterwards.
 */
export async function queryPlans(
  url: string,
  schema: string,
  events: number,
): Promise<PlanTiming[]> {
  const dataDir = mkdtempSync(join(tmpdir(), "orisun-plans-"));
  const store = await EventStore.open({
    url,
    schema,
    poolSize: 1,
    dataDir,
    onIdleError: () => {},
    groupCommit: { maxEvents: 10_000, maxBytes: 8 * 1024 * 1024, maxWaitMs: 5 },
  });
  // As the store's own connections are set up (store/database.ts): without JIT.
  const client = new pg.Client({
    connectionString: url,
    options: `-c search_path="${schema}" -c jit=off`,
  });
  await client.connect();
  try {
    await client.query(
      `INSERT INTO orisun_boundaries (name, last_commit, last_prepare) VALUES ($1, $2, $2)`,
      [BOUNDARY, events],
    );
    await client.query(
      `INSERT INTO orisun_events
         (boundary, commit_position, prepare_position, event_id, event_type, tags, data)
       SELECT $1, i, i, 'e' || i, 'Type' || (i % 20),
         ARRAY['["entity","e' || (i % $3::int8) || '"]', '["kind","k' || (i % 7) || '"]',
           '["id","u' || i || '"]']
           || CASE WHEN i % ($2::int8 / 5) = 0 THEN ARRAY['["rare","yes"]'] ELSE ARRAY[]::text[] END,
         ('{"i":' || i || '}')::json
       FROM generate_series(1, $2::int8) AS i`,
      [BOUNDARY, events, ENTITIES],
    );
    await client.query("ANALYZE orisun_events");

    const middle = { commit: BigInt(events / 2), prepare: BigInt(events / 2) };
    const start = { commit: 0n, prepare: 0n };
    const request = (query: Query, extra: Partial<ReadRequest>): ReadRequest => ({
      boundary: BOUNDARY,
      query,
      count: 1_000,
      direction: "asc",
      ...extra,
    });
    // The statement the store runs once it knows the query (read.ts): the sparse read for a tag
    // query with few matches, else the planner's read.
    const read = async (query: Query, extra: Partial<ReadRequest> = {}): Promise<Statement> => {
      if (readsSparse(query)) {
        const sparse = selectSparseEvents(request(query, extra)).compile(store.database.db);
        const { rows } = await client.query(sparse.sql, sparse.parameters as unknown[]);
        if (rows[0]?.dense === false) return sparse;
      }
      return plannersRead(query, extra);
    };
    const plannersRead = (query: Query, extra: Partial<ReadRequest> = {}) =>
      selectEvents(request(query, extra)).compile(store.database.db);
    // orisun_violated past its walk (every marker here lies over a thousand events back): the
    // sparse check for a tag query whose tags few events carry, else the fenced check.
    const check = async ({ after, query }: Condition, form?: "fenced"): Promise<Statement> => {
      const parameters = [BOUNDARY, after.commit.toString(), after.prepare.toString()];
      if (form === undefined && query.every((c) => c.tags.length > 0)) {
        const sparse = { sql: await checkSql(client, query, "sparse"), parameters };
        const { rows } = await client.query(sparse.sql, parameters);
        if (rows[0]?.dense === false) return sparse;
      }
      return { sql: await checkSql(client, query), parameters };
    };
    const nobody = criterion([], [tag("user", "nobody")]);
    const entity = criterion([], [tag("entity", "e123")]);
    const kind = criterion([], [tag("kind", "k3")]);
    const never: Query = [{ types: ["Never"], tags: [] }, ...nobody];
    const manyTypes: Query = Array.from({ length: 100 }, (_, c) => ({
      types: Array.from({ length: 100 }, (_, t) => `Never${c}-${t}`),
      tags: [],
    }));
    const shapes: [string, Statement][] = [
      ["read 10, a tag on no event", await read(nobody, { count: 10 })],
      ["read 10, an entity tag (5 events)", await read(entity, { count: 10 })],
      [
        "read 10, an id tag (1 event)",
        await read(criterion([], [tag("id", "u4242")]), { count: 10 }),
      ],
      ["the planner's read alone, 10, a tag on no event", plannersRead(nobody, { count: 10 })],
      ["read 10, a type nobody has or a tag on no event", await read(never, { count: 10 })],
      [
        "the planner's read alone, 10, a type nobody has or a tag on no event",
        plannersRead(never, { count: 10 }),
      ],
      ["read 10, 100 criteria of 100 types nobody has", await read(manyTypes, { count: 10 })],
      [
        "the planner's read alone, 10, 100 criteria of 100 types nobody has",
        plannersRead(manyTypes, { count: 10 }),
      ],
      ["read, a tag on 5 events", await read(criterion([], [tag("rare", "yes")]))],
      ["read, a tag on no event", await read(nobody)],
      ["read, an entity tag (5 events)", await read(entity)],
      ["read, a tag on 14%, first page", await read(kind)],
      [
        "the probe that finds a tag on 14% dense (its first read in a process)",
        selectSparseEvents(request(kind, {})).compile(store.database.db),
      ],
      ["read, a tag on 14%, page from the middle", await read(kind, { from: middle })],
      ["read, a type (5%)", await read(criterion(["Type7"], []))],
      ["read, a type and an entity tag", await read(criterion(["Type3"], [tag("entity", "e123")]))],
      [
        "read, two entity tags OR'ed",
        await read([
          { types: [], tags: [tag("entity", "e1")] },
          { types: [], tags: [tag("entity", "e2")] },
        ]),
      ],
      ["read, everything, page from the middle", await read([], { from: middle })],
      ["read, a tag on 14%, backwards from the end", await read(kind, { direction: "desc" })],
      [
        "condition, a tag nobody has used (passes)",
        await check({ after: start, query: criterion([], [tag("user", "new")]) }),
      ],
      [
        "condition, an entity tag after the middle",
        await check({ after: middle, query: criterion([], [tag("entity", "e123")]) }),
      ],
      [
        "condition, a tag on 14% after the middle (fails)",
        await check({ after: middle, query: criterion([], [tag("kind", "k3")]) }),
      ],
      [
        "the probe that finds a tag on 14% dense, before each of its fenced checks",
        {
          sql: await checkSql(client, kind, "sparse"),
          parameters: [BOUNDARY, middle.commit.toString(), middle.prepare.toString()],
        },
      ],
      [
        "condition, a type and an entity tag after the middle (fails)",
        await check({ after: middle, query: criterion(["Type3"], [tag("entity", "e123")]) }),
      ],
      [
        "the fenced check alone, a type and an entity tag after the middle (fails)",
        await check(
          { after: middle, query: criterion(["Type3"], [tag("entity", "e123")]) },
          "fenced",
        ),
      ],
      [
        "condition, a type after the middle (fails)",
        await check({ after: middle, query: criterion(["Type7"], []) }),
      ],
    ];
    const timings: PlanTiming[] = [];
    for (const [shape, compiled] of shapes) {
      const times: number[] = [];
      let plan = "";
      for (let i = 0; i < RUNS; i++) {
        const { rows } = await client.query(
          `EXPLAIN (ANALYZE, FORMAT JSON) ${compiled.sql}`,
          compiled.parameters as unknown[],
        );
        const [explained] = rows[0]["QUERY PLAN"] as [{ Plan: PlanNode; "Execution Time": number }];
        times.push(explained["Execution Time"]);
        plan = describe(explained.Plan);
      }
      timings.push({ shape, ms: median(times), plan });
    }
    return timings;
  } finally {
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => {});
    await client.end();
    await store.close();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

interface PlanNode {
  readonly "Node Type": string;
  readonly "Index Name"?: string;
  readonly Plans?: readonly PlanNode[];
}

function describe(node: PlanNode): string {
  const index = node["Index Name"] ? ` (${node["Index Name"]})` : "";
  const children = node.Plans?.map(describe) ?? [];
  const own = `${node["Node Type"]}${index}`;
  if (children.length === 0) return own;
  return `${own} > ${children.length === 1 ? children[0] : `[${children.join("; ")}]`}`;
}
