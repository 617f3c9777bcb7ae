import { PGlite } from "@electric-sql/pglite";
import { Kysely, PostgresDialect, type PostgresPool, type PostgresPoolClient, sql } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Appender } from "../server/store/append.js";
import { CALL_APPEND } from "../server/store/append-function.js";
import { RECENT_CHECK_EVENTS } from "../server/store/condition-check.js";
import { StoreError } from "../server/store/errors.js";
import { migrate } from "../server/store/migrations.js";
import { guardedPool } from "../server/store/pg-pool.js";
import { pglitePool } from "../server/store/pglite-pool.js";
import { type Database, encodeTag } from "../server/store/schema.js";
import type { AppendRequest, Position, Query, Tag } from "../server/store/types.js";
import { dropSchema, freshSchema, GROUP_COMMIT, PG_URL } from "./support/databases.js";

/** A pool whose every statement is recorded: the round trips an append makes. */
function counting(pool: PostgresPool, statements: string[]): PostgresPool {
  return {
    ...pool,
    async connect(): Promise<PostgresPoolClient> {
      const client = await pool.connect();
      return {
        ...client,
        query: (text: string, parameters: readonly unknown[]) => {
          statements.push(text);
          return client.query(text, parameters);
        },
        release: () => client.release(),
      } as unknown as PostgresPoolClient;
    },
    end: () => pool.end(),
  };
}

interface Target {
  readonly name: string;
  /** A migrated database and a way to open a pool on it (two: two processes' worth). */
  setUp(): Promise<{ pool: () => PostgresPool; cleanup: () => Promise<void> }>;
}

const targets: Target[] = [
  {
    name: "postgres",
    async setUp() {
      const schema = freshSchema("fn");
      const setup = new pg.Client({ connectionString: PG_URL });
      await setup.connect();
      await setup.query(`CREATE SCHEMA "${schema}"`);
      await setup.end();
      const pools: pg.Pool[] = [];
      const pool = () => {
        const p = new pg.Pool({
          connectionString: PG_URL,
          max: 4,
          options: `-c search_path="${schema}"`,
        });
        pools.push(p);
        return guardedPool(p);
      };
      const migrator = new Kysely<unknown>({ dialect: new PostgresDialect({ pool: pool() }) });
      await migrate(migrator, schema);
      return {
        pool,
        cleanup: async () => {
          await Promise.all(pools.map((p) => p.end().catch(() => {})));
          await dropSchema(schema);
        },
      };
    },
  },
  {
    name: "pglite",
    async setUp() {
      const db = new PGlite({ parsers: { 20: (v: string) => v, 114: (v: string) => v } });
      // One session: every "process" shares the pool, as every transaction does in PGlite.
      const shared = pglitePool(db, () => {});
      await migrate(
        new Kysely<unknown>({ dialect: new PostgresDialect({ pool: shared }) }),
        "public",
      );
      return { pool: () => shared, cleanup: () => db.close() };
    },
  },
];

const tag = [{ key: "user", value: "ada" }];
const query = [{ types: [], tags: tag }];

describe.each(targets)("one-round-trip append on $name", (target) => {
  let setUp: Awaited<ReturnType<Target["setUp"]>>;
  beforeAll(async () => {
    setUp = await target.setUp();
  });
  afterAll(() => setUp.cleanup());

  /** An appender, as one process has, whose statements are recorded. */
  function appender() {
    const statements: string[] = [];
    const pool = counting(setUp.pool(), statements);
    const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
    const a = new Appender(db, pool, GROUP_COMMIT, () => {}, "test", {
      maxBytes: 1 << 20,
      idleMs: 60_000,
    });
    return { a, statements, db };
  }

  const event = (id: string, tags = tag) => ({
    id,
    type: "Registered",
    tags,
    data: `{"id":"${id}"}`,
    metadata: "",
  });
  const request = (
    boundary: string,
    ids: string[],
    after?: Position,
    tags = tag,
  ): AppendRequest => ({
    boundary,
    events: ids.map((id) => event(id, tags)),
    condition: after ? { after, query } : undefined,
  });

  it("a lone append is one statement, the function, whether its condition is decided in memory or not", async () => {
    const { a, statements } = appender();
    // No window yet: the function checks the condition.
    const first = await a.append(request("lone", ["e1"], { commit: 0n, prepare: 0n }));
    expect(first).toEqual({ commit: 1n, prepare: 1n });
    expect(statements).toHaveLength(1);
    expect(statements[0]?.startsWith(CALL_APPEND)).toBe(true);
    // The window now holds {1,1}: decided in memory.
    const second = await a.append(request("lone", ["e2", "e3"], first));
    expect(second).toEqual({ commit: 2n, prepare: 3n });
    expect(statements).toHaveLength(2);
    expect(statements[1]?.startsWith(CALL_APPEND)).toBe(true);
  });

  it("a fault after a commit (a listener that throws) refuses what waited, is reported, and the boundary goes on", async () => {
    const pool = setUp.pool();
    const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
    const boom = new Error("a listener's bug");
    let throws = true;
    const a = new Appender(
      db,
      pool,
      GROUP_COMMIT,
      () => {
        if (throws) {
          throws = false;
          throw boom;
        }
      },
      "test",
      { maxBytes: 1 << 20, idleMs: 60_000 },
    );
    const told: [string, unknown][] = [];
    a.uncertain = (boundary, fault) => told.push([boundary, fault]);
    // The first goes alone; the two behind it wait for its transaction.
    const first = a.append(request("fault", ["f1"]));
    const waiting = [a.append(request("fault", ["f2"])), a.append(request("fault", ["f3"]))];
    // Its caller was answered before the listener ran: the commit stands.
    expect(await first).toEqual({ commit: 1n, prepare: 1n });
    for (const w of waiting) {
      await expect(w).rejects.toMatchObject({
        kind: "internal",
        message: expect.stringContaining("before this append was attempted"),
      });
    }
    expect(told).toEqual([["fault", boom]]);
    // A new drain takes the next append, after the one commit.
    expect(await a.append(request("fault", ["f4"]))).toEqual({ commit: 2n, prepare: 2n });
  });

  it("quiet: a commit the process publishes itself is one statement too, with its head and count", async () => {
    const { a, statements, db } = appender();
    a.quiet = (boundary) => boundary === "quiet";
    const first = await a.append(request("quiet", ["q1"], { commit: 0n, prepare: 0n }));
    const second = await a.append(request("quiet", ["q2", "q3"], first));
    expect(second).toEqual({ commit: 2n, prepare: 3n });
    expect(statements).toHaveLength(2);
    expect(statements.every((s) => s.startsWith(CALL_APPEND))).toBe(true);
    const row = await db
      .selectFrom("orisun_boundaries")
      .select(["last_commit", "last_prepare", "event_count"])
      .where("name", "=", "quiet")
      .executeTakeFirstOrThrow();
    expect([row.last_commit, row.last_prepare, row.event_count].map(String)).toEqual([
      "2",
      "3",
      "3",
    ]);
  });

  it("a condition another process violated is caught although this process's window says it holds", async () => {
    const one = appender();
    const two = appender();
    const head = await one.a.append(request("two", ["a1"], { commit: 0n, prepare: 0n }));
    // Another process appends a matching event: one's window still ends at `head`.
    await two.a.append(request("two", ["b1"]));
    expect(one.a.recent.violated("two", head, head, query)).toBe(false);
    const sent = one.statements.length;
    const failed = await one.a.append(request("two", ["a2"], head)).catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(StoreError);
    expect((failed as StoreError).kind).toBe("condition_failed");
    // None of its ids stored, so not a retry: the function's answer is final, one round trip.
    expect(one.statements.slice(sent)).toHaveLength(1);
    // And a condition that still holds commits after the other's head, in one statement.
    const before = one.statements.length;
    const ok = await one.a.append(request("two", ["a3"], { commit: 2n, prepare: 2n }));
    expect(ok).toEqual({ commit: 3n, prepare: 3n });
    expect(one.statements.slice(before)).toHaveLength(1);
  });

  const filler = (prefix: string, n: number) =>
    Array.from({ length: n }, (_, i) => event(`${prefix}${i}`, [{ key: "filler", value: "x" }]));
  const start = { commit: 0n, prepare: 0n };
  const nobody = [{ types: [], tags: [{ key: "user", value: "nobody" }] }];

  /**
   * A boundary written by another process, so that this one's window never knows it and every
   * condition is checked in SQL: over a thousand filler events, one matching `query` (`tagged`;
   * `before` is the position just before it), then twenty more.
   */
  async function walkable(boundary: string): Promise<{ tagged: Position; before: Position }> {
    const other = appender();
    await other.a.append({ boundary, events: filler("f", RECENT_CHECK_EVENTS + 200) });
    const tagged = await other.a.append({ boundary, events: [event("t1")] });
    await other.a.append({ boundary, events: filler("g", 20) });
    return { tagged, before: { commit: tagged.commit - 1n, prepare: tagged.prepare - 1n } };
  }

  it(`checks a marker up to ${RECENT_CHECK_EVENTS} events back by walking them, one further back through the indexes, both exactly`, async () => {
    const mine = appender();
    const b = "walk";
    const { tagged, before } = await walkable(b);
    const claim = (id: string, after: Position, q: Query) =>
      mine.a.append({ boundary: b, events: [event(id, [])], condition: { after, query: q } });
    const kind = (p: Promise<unknown>) =>
      p.then(
        () => "ok",
        (e: unknown) => (e instanceof StoreError ? e.kind : String(e)),
      );
    // Over a thousand events after the marker: through the indexes.
    expect(await kind(claim("c1", start, query))).toBe("condition_failed");
    expect(await kind(claim("c2", start, nobody))).toBe("ok");
    // Twenty-odd events after the marker: walked.
    expect(await kind(claim("c3", before, query))).toBe("condition_failed");
    expect(await kind(claim("c4", tagged, query))).toBe("ok");
    expect(await kind(claim("c5", tagged, nobody))).toBe("ok");
    // A match-all condition sees any event after its marker, walked or not.
    const head = await mine.a.append({ boundary: b, events: [event("c6", [])] });
    expect(await kind(claim("c7", before, []))).toBe("condition_failed");
    expect(await kind(claim("c8", start, []))).toBe("condition_failed");
    expect(await kind(claim("c9", head, []))).toBe("ok");
    // Further back, a query whose every criterion names a tag is checked among the events that
    // carry its tags when they are few (the sparse check), else fenced: the filler tag is on
    // 1,220 events, all "Registered", like the tagged one.
    const filled = [{ key: "filler", value: "x" }];
    const cases: [Query, string][] = [
      [[{ types: ["Registered"], tags: tag }], "condition_failed"], // sparse, violated
      [[{ types: ["Other"], tags: tag }], "ok"], // sparse, the type holds it
      [[{ types: [], tags: [...tag, ...filled] }], "ok"], // sparse: no event has both
      [
        [
          { types: [], tags: [{ key: "user", value: "ghost" }] },
          { types: [], tags: tag },
        ],
        "condition_failed",
      ],
      [[{ types: ["Registered"], tags: filled }], "condition_failed"], // dense: fenced
      [[{ types: ["Other"], tags: filled }], "ok"], // dense: fenced, holds
      [
        [
          { types: ["Other"], tags: [] },
          { types: [], tags: tag },
        ],
        "condition_failed",
      ], // fenced
    ];
    for (const [i, [q, outcome]] of cases.entries()) {
      expect(await kind(claim(`d${i}`, start, q)), JSON.stringify(q)).toBe(outcome);
    }
  });

  it("the full transaction checks as the function does: walked, or through the indexes, exactly", async () => {
    const mine = appender();
    const b = "full-walk";
    const { tagged, before } = await walkable(b);
    // A large append of this process holds the boundary so that the four claims queue behind it
    // and go as one batch. Its stretch lies after every marker, so no claim is decided in memory.
    const big = mine.a.append({ boundary: b, events: filler("big", 300) });
    const claim = (id: string, after: Position, q: Query) =>
      mine.a.append({ boundary: b, events: [event(id, [])], condition: { after, query: q } }).then(
        () => "ok",
        (e: unknown) => (e instanceof StoreError ? e.kind : String(e)),
      );
    const sent = mine.statements.length;
    const outcomes = Promise.all([
      claim("c1", start, query), // over a thousand events after the marker: indexes, violated
      claim("c2", tagged, query), // 320 after: walked, holds
      claim("c3", before, query), // walked, violated
      claim("c4", start, nobody), // indexes, holds
    ]);
    await big;
    expect(await outcomes).toEqual(["condition_failed", "ok", "condition_failed", "ok"]);
    // The function declined the batch (a condition failed): the transaction decided it, its
    // checks by orisun_violated.
    const after = mine.statements.slice(sent + 1);
    expect(after[0]?.startsWith(CALL_APPEND)).toBe(true);
    expect(after.some((s) => s.includes("orisun_violated("))).toBe(true);
    const stored = await mine.db
      .selectFrom("orisun_events")
      .select("event_id")
      .where("boundary", "=", b)
      .where("event_id", "in", ["c1", "c2", "c3", "c4"])
      .orderBy("commit_position")
      .execute();
    expect(stored.map((r) => r.event_id)).toEqual(["c2", "c4"]);
  });

  it("client ids: an exact retry answers the original position, a mixed one ALREADY_EXISTS, nothing is written twice", async () => {
    const { a, statements, db } = appender();
    const original = await a.append(request("ids", ["x1", "x2"], { commit: 0n, prepare: 0n }));
    // Its condition now fails (its own events match it, as this process's window tells at
    // once): the full path looks for the ids first and answers.
    const retry = await a.append(request("ids", ["x1", "x2"], { commit: 0n, prepare: 0n }));
    expect(retry).toEqual(original);
    // Without a condition, the function is tried, refuses (a stored id), and the full path
    // answers the same.
    const before = statements.length;
    const unconditional = await a.append(request("ids", ["x1", "x2"]));
    expect(unconditional).toEqual(original);
    expect(statements[before]?.startsWith(CALL_APPEND)).toBe(true);
    expect(statements.length - before).toBeGreaterThan(1);
    const mixed = await a.append(request("ids", ["x2", "x3"])).catch((e: unknown) => e);
    expect((mixed as StoreError).kind).toBe("already_exists");
    const { rows } = await db
      .selectFrom("orisun_events")
      .select("event_id")
      .where("boundary", "=", "ids")
      .execute()
      .then((r) => ({ rows: r }));
    expect(rows.map((r) => r.event_id).sort()).toEqual(["x1", "x2"]);
    const boundary = await db
      .selectFrom("orisun_boundaries")
      .select(["last_commit", "last_prepare", "event_count"])
      .where("name", "=", "ids")
      .executeTakeFirstOrThrow();
    expect(boundary).toEqual({ last_commit: "1", last_prepare: "2", event_count: "2" });
  });

  it("an exact retry of a conditional append by another process answers its position", async () => {
    const one = appender();
    const original = await one.a.append(
      request("retry2", ["r1", "r2"], { commit: 0n, prepare: 0n }),
    );
    // Another process, without a window: the function finds the condition violated and the ids
    // stored, and the full path answers the original position.
    const two = appender();
    const retry = await two.a.append(request("retry2", ["r1", "r2"], { commit: 0n, prepare: 0n }));
    expect(retry).toEqual(original);
    expect(two.statements[0]?.startsWith(CALL_APPEND)).toBe(true);
    expect(two.statements.length).toBeGreaterThan(1);
    const fresh = await two.a
      .append(request("retry2", ["r3"], { commit: 0n, prepare: 0n }))
      .catch((e: unknown) => e);
    expect((fresh as StoreError).kind).toBe("condition_failed");
  });

  it("a batch commits in one statement: positions in arrival order, the head and count advanced", async () => {
    const { a, statements, db } = appender();
    // A large first append holds the boundary, so that the next ones queue and go together.
    const big = a.append(
      request(
        "batch",
        Array.from({ length: 500 }, (_, i) => `big${i}`),
        undefined,
        [],
      ),
    );
    const small = Array.from({ length: 5 }, (_, i) =>
      a.append(request("batch", [`s${i}`], undefined, [{ key: "n", value: String(i) }])),
    );
    expect(await big).toEqual({ commit: 1n, prepare: 500n });
    const positions = await Promise.all(small);
    expect(positions).toEqual(
      Array.from({ length: 5 }, (_, i) => ({ commit: BigInt(2 + i), prepare: BigInt(501 + i) })),
    );
    expect(statements.every((s) => s.startsWith(CALL_APPEND))).toBe(true);
    expect(statements).toHaveLength(2);
    const boundary = await db
      .selectFrom("orisun_boundaries")
      .select(["last_commit", "last_prepare", "event_count"])
      .where("name", "=", "batch")
      .executeTakeFirstOrThrow();
    expect(boundary).toEqual({ last_commit: "6", last_prepare: "505", event_count: "505" });
  });

  it("text that array literals must quote arrives exactly, in one statement", async () => {
    const { a, statements, db } = appender();
    const awkward = [
      { key: 'q"uote', value: "back\\slash" },
      { key: "{braces}", value: "a,b" },
      { key: "NULL", value: "" },
      { key: "é 😀", value: "tab\there" },
    ];
    const data = '{\n\t"text": "line\\nbreak \\"quoted\\" 😀",\r\n "n": [1, 2]}';
    const metadata = '{"by": "x\\\\y"}';
    const position = await a.append({
      boundary: "awkward",
      events: [
        { id: 'id "1" \\ {x}', type: "Type, with {all}", tags: awkward, data, metadata },
        { id: "id2", type: "Plain", tags: [], data: "{}", metadata: "" },
      ],
    });
    expect(position).toEqual({ commit: 1n, prepare: 2n });
    expect(statements).toHaveLength(1);
    const rows = await db
      .selectFrom("orisun_events")
      .select([
        "event_id",
        "event_type",
        "tags",
        sql<string>`data::text`.as("data"),
        sql<string | null>`metadata::text`.as("metadata"),
      ])
      .where("boundary", "=", "awkward")
      .orderBy("prepare_position")
      .execute();
    expect(rows).toEqual([
      {
        event_id: 'id "1" \\ {x}',
        event_type: "Type, with {all}",
        tags: awkward.map(encodeTag),
        data,
        metadata,
      },
      { event_id: "id2", event_type: "Plain", tags: [], data: "{}", metadata: null },
    ]);
  });

  it("the JSON version of the function stays, for processes of an earlier build", async () => {
    const pool = setUp.pool();
    const client = await pool.connect();
    try {
      const events = JSON.stringify([
        {
          dc: "1",
          dp: "1",
          id: "old1",
          type: "T",
          tags: [encodeTag(tag[0] as Tag)],
          data: "{}",
          meta: "",
        },
      ]);
      const { rows } = await client.query<{ outcome: string }>(
        "SELECT outcome FROM orisun_append($1, NULL, NULL, NULL, NULL, '[]'::json, $2::json, 1, 'x')",
        ["earlier", events],
      );
      expect(rows).toEqual([{ outcome: "ok" }]);
      const stored = await client.query<{ event_id: string }>(
        "SELECT event_id FROM orisun_events WHERE boundary = 'earlier'",
        [],
      );
      expect(stored.rows).toEqual([{ event_id: "old1" }]);
    } finally {
      client.release();
    }
  });

  it("a marker after the head writes nothing in the function and gets the full path's answer", async () => {
    const { a, statements } = appender();
    await a.append(request("ahead", ["m1"]));
    const before = statements.length;
    const position = await a.append(request("ahead", ["m2"], { commit: 9n, prepare: 9n }));
    expect(position).toEqual({ commit: 2n, prepare: 2n });
    expect(statements[before]?.startsWith(CALL_APPEND)).toBe(true);
    expect(statements.length - before).toBeGreaterThan(1);
  });
});
