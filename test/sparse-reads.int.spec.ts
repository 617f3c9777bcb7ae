import { type CompiledQuery, Kysely, PostgresDialect } from "kysely";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { checkSql, queryJson } from "../server/store/condition-check.js";
import { DenseQueries } from "../server/store/dense-queries.js";
import type { EventStore } from "../server/store/event-store.js";
import { matches } from "../server/store/matcher.js";
import { readBytes, SPARSE_MATCHES, selectEvents } from "../server/store/query-sql.js";
import { readEvents } from "../server/store/read.js";
import type { Database } from "../server/store/schema.js";
import {
  comparePositions,
  type EventToAppend,
  type Query,
  type ReadRequest,
  type StoredEvent,
} from "../server/store/types.js";
import { storeTargets } from "./support/databases.js";
import { prng } from "./support/prng.js";

/**
 * Reads of tag queries (read.ts): the sparse read for a query whose probe finds at most
 * SPARSE_MATCHES events in its boundary, the planner's read past that, and the memory of dense
 * queries between them, all returning exactly what the log holds.
 */

const EVENTS = 3_000;

/** Tags whose counts sit on both sides of the sparse read's limit, and some that never repeat. */
function event(prefix: string, i: number): EventToAppend {
  const tags = [
    { key: "n", value: `v${i}` },
    { key: "few", value: `f${i % 300}` },
  ];
  if (i % 3 === 0) tags.push({ key: "m1000", value: "yes" });
  if (i % 3 === 0 || i === 1) tags.push({ key: "m1001", value: "yes" });
  if (i % 2 === 0) tags.push({ key: "half", value: "yes" });
  return { id: `${prefix}${i}`, type: `T${i % 5}`, tags, data: `{"i":${i}}`, metadata: "" };
}

const tag = (key: string, value: string) => ({ key, value });

const QUERIES: readonly Query[] = [
  [{ types: [], tags: [tag("n", "v123")] }],
  [{ types: [], tags: [tag("n", "nobody")] }],
  [{ types: [], tags: [tag("few", "f7")] }],
  [{ types: [], tags: [tag("m1000", "yes")] }],
  [{ types: [], tags: [tag("m1001", "yes")] }],
  [{ types: [], tags: [tag("half", "yes")] }],
  [{ types: [], tags: [tag("m1000", "yes"), tag("few", "f3")] }],
  [{ types: ["T1", "T2"], tags: [tag("m1001", "yes")] }],
  [
    { types: [], tags: [tag("n", "v5")] },
    { types: [], tags: [tag("few", "f9")] },
  ],
  // A criterion of types alone beside one with a tag: probed through the type index.
  [
    { types: ["T3"], tags: [] },
    { types: [], tags: [tag("n", "v8")] },
  ],
  // Types alone: two of them (1,200 events, dense), two criteria (600), one type (never probed).
  [{ types: ["T1", "T2"], tags: [] }],
  [
    { types: ["T4"], tags: [] },
    { types: ["Nope"], tags: [] },
  ],
  [{ types: ["Nope"], tags: [] }],
];

describe.each(storeTargets)("sparse reads on $name", (target) => {
  let store: EventStore;
  let cleanup: () => Promise<void>;
  let log: StoredEvent[];

  beforeAll(async () => {
    ({ store, cleanup } = await target.open());
    for (let from = 0; from < EVENTS; from += 500) {
      const batch = Array.from({ length: 500 }, (_, k) => event("r", from + k));
      await store.append({ boundary: "r", events: batch });
      // Another boundary with the same tags: its matches neither count nor show.
      await store.append({
        boundary: "other",
        events: batch.map((e) => ({ ...e, id: `o${e.id}` })),
      });
    }
    log = await store.read({ boundary: "r", query: [], count: EVENTS, direction: "asc" });
    expect(log).toHaveLength(EVENTS);
  }, 120_000);
  afterAll(() => cleanup());

  function expected(request: ReadRequest): string[] {
    const ordered = request.direction === "asc" ? log : [...log].reverse();
    return ordered
      .filter((e) => matches(e, request.query))
      .filter((e) => {
        if (request.until && comparePositions(e.position, request.until) > 0) return false;
        if (!request.from) return true;
        const c = comparePositions(e.position, request.from);
        return request.direction === "asc" ? c >= 0 : c <= 0;
      })
      .slice(0, request.count)
      .map((e) => e.id);
  }

  it("the tags on both sides of the limit have the counts the tests rely on", () => {
    const count = (key: string) => log.filter((e) => e.tags.some((t) => t.key === key)).length;
    expect([count("m1000"), count("m1001")]).toEqual([SPARSE_MATCHES, SPARSE_MATCHES + 1]);
  });

  it("return what the log holds, for random pages of every query, whichever read serves them", async () => {
    const next = prng(7); // deterministic, so that a failure replays
    const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)] as T;
    const position = () => pick(log).position;
    for (let i = 0; i < 250; i++) {
      const request: ReadRequest = {
        boundary: "r",
        query: pick(QUERIES),
        count: pick([1, 10, 100, 999, 1_000, 1_001, 5_000]),
        direction: pick(["asc", "desc"] as const),
        from: next() < 0.5 ? position() : undefined,
        until: next() < 0.3 ? position() : undefined,
      };
      const got = await store.read(request);
      expect(
        got.map((e) => e.id),
        JSON.stringify(request, (_, v) => (typeof v === "bigint" ? String(v) : v)),
      ).toEqual(expected(request));
    }
  }, 120_000);

  it("remember exactly the queries whose probe finds more events than the limit, and read them the same", async () => {
    const dense = new DenseQueries();
    for (const query of QUERIES) {
      const request: ReadRequest = { boundary: "r", query, count: 10, direction: "desc" };
      const first = await readEvents(store.database.db, request, dense);
      const again = await readEvents(store.database.db, request, dense);
      expect(first.map((e) => e.id)).toEqual(expected(request));
      expect(again).toEqual(first);
    }
    const remembered = QUERIES.filter((query) => dense.has("r", query));
    // Types aside: T1 and T2 hold 400 of the 1,001 events tagged m1001. Counted in the boundary
    // read, not the table: with "other", 2,000 events carry m1000.
    expect(remembered).toEqual([QUERIES[4], QUERIES[5], QUERIES[7], QUERIES[10]]);
  });

  it("return every event of a sparse query for a page larger than the limit", async () => {
    const request: ReadRequest = {
      boundary: "r",
      query: [{ types: [], tags: [tag("m1000", "yes")] }],
      count: 5_000,
      direction: "asc",
    };
    const got = await store.read(request);
    expect(got).toHaveLength(SPARSE_MATCHES);
    expect(got).toEqual(log.filter((e) => matches(e, request.query)));
  });

  it("stop at maxBytes on both reads: a prefix of the page, cut exactly when short, and paging reaches every match", async () => {
    const next = prng(11);
    const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)] as T;
    for (let i = 0; i < 150; i++) {
      const request: ReadRequest = {
        boundary: "r",
        query: pick(QUERIES),
        count: pick([1, 10, 100, 1_001, 5_000]),
        direction: pick(["asc", "desc"] as const),
        from: next() < 0.5 ? pick(log).position : undefined,
        maxBytes: pick([1, 500, 5_000, 60_000]),
      };
      const label = JSON.stringify(request, (_, v) => (typeof v === "bigint" ? String(v) : v));
      const full = expected(request);
      const got = await store.read(request);
      const ids = got.map((e) => e.id);
      expect(ids, label).toEqual(full.slice(0, ids.length));
      if (full.length > 0) expect(ids.length, label).toBeGreaterThan(0);
      expect(got.cut, label).toBe(ids.length < full.length);
      // Within the bound unless one event alone is past it; cut where the next one would pass it.
      const bytes = got.map(readBytes).reduce((a, b) => a + b, 0);
      if (got.length > 1) expect(bytes, label).toBeLessThanOrEqual(request.maxBytes ?? 0);
      const following = log.find((e) => e.id === full[ids.length]);
      if (got.cut && following) {
        expect(bytes + readBytes(following), label).toBeGreaterThan(request.maxBytes ?? 0);
      }
    }
    // Paging by position through a cut read returns the whole query, in order.
    const query: Query = [{ types: [], tags: [tag("half", "yes")] }];
    const all: string[] = [];
    let from: ReadRequest["from"];
    for (let pages = 0; ; pages++) {
      expect(pages).toBeLessThan(1_000);
      const page = await store.read({
        boundary: "r",
        query,
        from,
        count: 1_000,
        direction: "asc",
        maxBytes: 20_000,
      });
      all.push(...page.map((e) => e.id));
      const last = page.at(-1);
      if (!last || (!page.cut && page.length < 1_000)) break;
      from = { commit: last.position.commit, prepare: last.position.prepare + 1n };
    }
    expect(all).toEqual(expected({ boundary: "r", query, count: EVENTS, direction: "asc" }));
  }, 120_000);
});

interface PlanNode {
  readonly "Node Type": string;
  readonly "Relation Name"?: string;
  readonly "Index Name"?: string;
  readonly "Actual Rows"?: number;
  readonly "Actual Loops"?: number;
  readonly "Rows Removed by Filter"?: number;
  readonly "Rows Removed by Index Recheck"?: number;
  readonly Plans?: readonly PlanNode[];
}

const nodes = (plan: PlanNode): PlanNode[] => [plan, ...(plan.Plans ?? []).flatMap(nodes)];

describe("a tag that ANALYZE did not list (PostgreSQL)", () => {
  const postgres = storeTargets.find((t) => t.name === "postgres");
  if (!postgres) throw new Error("no postgres target");
  const BOUNDARY_EVENTS = 50_000;
  let store: EventStore;
  let cleanup: () => Promise<void>;
  let db: Kysely<Database>;
  let pool: pg.Pool;
  const statements: CompiledQuery[] = [];

  beforeAll(async () => {
    ({ store, cleanup } = await postgres.open());
    if (!store.database.pool) throw new Error("no pg pool");
    pool = store.database.pool;
    // Each event has a tag of its own, as when every entity has one, and one of seven common
    // ones. ANALYZE then lists only the common ones, and PostgreSQL estimates every other tag at
    // its 0.5% default (the least common listed frequency halved, at most 0.5%).
    await pool.query(
      `INSERT INTO orisun_boundaries (name, last_commit, last_prepare) VALUES ('own', $1, $1)`,
      [BOUNDARY_EVENTS],
    );
    await pool.query(
      `INSERT INTO orisun_events
         (boundary, commit_position, prepare_position, event_id, event_type, tags, data)
       SELECT 'own', i, i, 'e' || i, 'T' || (i % 20),
         ARRAY['["entity","e' || i || '"]', '["kind","k' || (i % 7) || '"]'], '{}'::json
       FROM generate_series(1, $1::int8) AS i`,
      [BOUNDARY_EVENTS],
    );
    await pool.query("ANALYZE orisun_events");
    // The store's own connections, with every statement it runs written down.
    db = new Kysely<Database>({
      dialect: new PostgresDialect({ pool: store.database.connections }),
      log: (event) => {
        if (event.level === "query") statements.push(event.query);
      },
    });
  }, 120_000);
  afterAll(() => cleanup());

  /** Index entries and rows a scan node read: returned, or filtered out. */
  const entries = (n: PlanNode): number =>
    n["Relation Name"] === "orisun_events" || n["Index Name"]
      ? ((n["Actual Rows"] ?? 0) + (n["Rows Removed by Filter"] ?? 0)) * (n["Actual Loops"] ?? 1)
      : 0;

  /** Index entries and rows the statement read. */
  async function rowsTouched(statement: { sql: string; parameters: readonly unknown[] }) {
    const { rows } = await pool.query<{ "QUERY PLAN": [{ Plan: PlanNode }] }>(
      `EXPLAIN (ANALYZE, FORMAT JSON) ${statement.sql}`,
      statement.parameters as unknown[],
    );
    const plan = rows[0]?.["QUERY PLAN"][0]?.Plan;
    if (!plan) throw new Error("no plan");
    return nodes(plan).reduce((sum, n) => sum + entries(n), 0);
  }

  /** The one statement readEvents runs for `request`, with a fresh memory of dense queries. */
  async function storesRead(request: ReadRequest) {
    statements.length = 0;
    const events = await readEvents(db, request, new DenseQueries());
    expect(statements).toHaveLength(1);
    const [statement] = statements;
    if (!statement) throw new Error("no statement");
    return { events, statement };
  }

  const nobody = (value: string): Query[number] => ({ types: [], tags: [tag("entity", value)] });

  it.each([
    ["a tag nobody has", [nobody("nobody")]],
    ["a type nobody has or a tag nobody has", [{ types: ["Never"], tags: [] }, nobody("nobody")]],
    // OR'ed in one scan, PostgreSQL adds up the estimates (100 × 0.5%) and scans the boundary;
    // the probe takes one criterion at a time.
    ["100 tags nobody has", Array.from({ length: 100 }, (_, i) => nobody(`nobody${i}`))],
    [
      "100 criteria of 100 types nobody has",
      Array.from({ length: 100 }, (_, c) => ({
        types: Array.from({ length: 100 }, (_, t) => `Nope${c}-${t}`),
        tags: [],
      })),
    ],
  ] as [string, Query][])(
    "a page of 10 for %s: the planner's read walks the boundary, the store's reads nothing",
    async (_, query) => {
      const request: ReadRequest = { boundary: "own", query, count: 10, direction: "asc" };
      expect(await rowsTouched(selectEvents(request).compile(db))).toBeGreaterThanOrEqual(
        BOUNDARY_EVENTS,
      );
      const { events, statement } = await storesRead(request);
      expect(events).toEqual([]);
      expect(await rowsTouched(statement)).toBe(0);
    },
  );

  it.each([
    ["a tag nobody has", [], "nobody", []],
    ["a tag of one event", [], "e4242", ["e4242"]],
    ["a type and a tag of one event", ["T2"], "e4242", ["e4242"]],
  ])("a page of 10 for %s reads only its matches", async (_, types, value, ids) => {
    const request: ReadRequest = {
      boundary: "own",
      query: [{ types, tags: [tag("entity", value)] }],
      count: 10,
      direction: "asc",
    };
    const { events, statement } = await storesRead(request);
    expect(events.map((e) => e.id)).toEqual(ids);
    // The tag's index entries, its rows, and the page fetched by ctid.
    expect(await rowsTouched(statement)).toBeLessThanOrEqual(3 * ids.length);
  });

  it("a check far back on 100 tags nobody has, OR'ed, is probed one criterion at a time and touches nothing", async () => {
    const query: Query = Array.from({ length: 100 }, (_, i) => nobody(`nobody${i}`));
    const check = { sql: await checkSql(pool, query, "sparse"), parameters: ["own", "0", "0"] };
    expect(await rowsTouched(check)).toBe(0);
    const { rows } = await pool.query(check.sql, check.parameters);
    expect(rows[0]).toEqual({ dense: false, found: false });
  });

  it("a dense check of 100 criteria, probed and then fenced, reads a fraction of the boundary", async () => {
    // kind k3 is on 7,143 events, so the probe finds the query dense and orisun_violated goes on
    // to the fenced check, which PostgreSQL plans for every match: a BitmapOr of the criteria.
    const query: Query = [
      { types: ["Never"], tags: [tag("kind", "k3")] },
      ...Array.from({ length: 99 }, (_, i) => nobody(`nobody${i}`)),
    ];
    // auto_explain reports every statement orisun_violated runs, with its plan, as a notice.
    const client = await pool.connect();
    const plans: PlanNode[] = [];
    client.on("notice", (notice) => {
      const text = notice.message ?? "";
      const json = text.slice(text.indexOf("{"));
      if (text.includes('"Plan"')) plans.push((JSON.parse(json) as { Plan: PlanNode }).Plan);
    });
    try {
      await client.query("LOAD 'auto_explain'");
      for (const setting of [
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_nested_statements = on",
        "auto_explain.log_analyze = on",
        "auto_explain.log_format = json",
        "client_min_messages = log",
      ]) {
        await client.query(`SET ${setting}`);
      }
      const { rows } = await client.query(
        "SELECT orisun_violated('own', 0, 0, $1::json) AS violated",
        [JSON.stringify(queryJson(query))],
      );
      expect(rows[0]).toEqual({ violated: false });
      // The walk's 1,001 rows, the probe's 1,001, and k3's events, not the boundary.
      const touched = plans.flatMap(nodes).reduce((sum, n) => sum + entries(n), 0);
      expect(plans.length).toBeGreaterThanOrEqual(3); // the walk, the probe, the fenced check
      expect(touched).toBeLessThan(BOUNDARY_EVENTS / 2);
    } finally {
      client.release(true); // its settings go with it
    }
  });

  it("the store's connections compile no statement (JIT off)", async () => {
    // The check above spent 157 of its 169 ms compiling with JIT on (README, "Many criteria").
    const { rows } = await pool.query<{ jit: string }>("SHOW jit");
    expect(rows[0]?.jit).toBe("off");
  });

  it("a condition far back on a type and a tag of one event reads the tag's events, not the type's", async () => {
    // As orisun_violated runs them past the walk (condition-check.ts).
    const query: Query = [{ types: ["T2"], tags: [tag("entity", "e4242")] }];
    const statement = async (form: "fenced" | "sparse", at: bigint) => ({
      sql: await checkSql(pool, query, form),
      parameters: ["own", String(at), String(at)],
    });
    // The fenced check ANDs the type index, whose bitmap holds T2's 2,500 events.
    expect(await rowsTouched(await statement("fenced", 0n))).toBeGreaterThanOrEqual(2_500);
    expect(await rowsTouched(await statement("sparse", 0n))).toBeLessThanOrEqual(3);
    for (const [at, found] of [
      [0n, true],
      [4241n, true],
      [4242n, false],
    ] as const) {
      const { sql, parameters } = await statement("sparse", at);
      const { rows } = await pool.query(sql, parameters);
      expect(rows[0], String(at)).toEqual({ dense: false, found });
    }
  });
});
