import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import type { EventStore } from "../server/store/event-store.js";
import { dropSchema, freshSchema, openPostgresStore, PG_URL } from "./support/databases.js";

const used: string[] = [];
function schema(prefix: string): string {
  const name = freshSchema(prefix);
  used.push(name);
  return name;
}

async function withClient<T>(work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: PG_URL });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

afterAll(async () => {
  for (const name of used) await dropSchema(name);
});

describe("schema migrations at start-up", () => {
  // Other deployments (and parallel test files) create and drop schemas of the same database
  // all the time. Kysely's Migrator introspected every table of the database to find its own,
  // and failed with "schema … does not exist" when one vanished mid-query: a CI run failed so.
  it("succeed while other schemas of the same database are created and dropped", async () => {
    let churning = true;
    const churn = withClient(async (client) => {
      let n = 0;
      while (churning) {
        const other = schema("churn");
        await client.query(`CREATE SCHEMA "${other}"`);
        await client.query(`CREATE TABLE "${other}".t (id int PRIMARY KEY, v text)`);
        await client.query(`DROP SCHEMA "${other}" CASCADE`);
        n++;
      }
      return n;
    });
    const opened: EventStore[] = [];
    try {
      for (let i = 0; i < 20; i++) opened.push(await openPostgresStore(schema("mig"), 1));
    } finally {
      churning = false;
      expect(await churn).toBeGreaterThan(0);
      for (const store of opened) await store.close();
    }
    expect(opened).toHaveLength(20);
  }, 60_000);

  it("apply each migration once when several processes start on a fresh schema at once", async () => {
    const name = schema("race");
    const stores = await Promise.all(Array.from({ length: 6 }, () => openPostgresStore(name, 1)));
    for (const store of stores) await store.close();
    const applied = await withClient(
      async (client) =>
        (await client.query(`SELECT name FROM "${name}".kysely_migration ORDER BY name`)).rows,
    );
    expect(applied).toEqual([
      { name: "2026-11-28-events" },
      { name: "2026-12-01-deployment" },
      { name: "2026-12-01-published" },
      { name: "2026-12-02-append-function" },
      { name: "2026-12-02-auth-principals" },
      { name: "2026-12-02-event-count" },
      { name: "2026-12-03-append-rows" },
      { name: "2026-12-03-tags-statistics" },
      { name: "2026-12-04-recent-checks" },
      { name: "2026-12-05-condition-check" },
      { name: "2026-12-05-tags-pending-list" },
      { name: "2026-12-05-tags-sparse-check" },
      { name: "2026-12-06-quiet-commits" },
    ]);
    // The tags column samples 500 × 300 rows in ANALYZE (see the migration).
    const target = await withClient(
      async (client) =>
        (
          await client.query(
            `SELECT attstattarget::int AS n FROM pg_attribute
             WHERE attrelid = '"${name}".orisun_events'::regclass AND attname = 'tags'`,
          )
        ).rows[0],
    );
    expect(target).toEqual({ n: 500 });
    // The tags index's pending list is 256 kB, not PostgreSQL's 4 MB (see the migration).
    const index = await withClient(
      async (client) =>
        (
          await client.query(
            `SELECT reloptions FROM pg_class WHERE oid = '"${name}".orisun_events_tags_idx'::regclass`,
          )
        ).rows[0],
    );
    expect(index).toEqual({ reloptions: ["gin_pending_list_limit=256"] });
    // And a restart applies nothing again (it would fail: the tables exist).
    const again = await openPostgresStore(name, 1);
    await again.close();
  }, 30_000);

  it("refuse a schema written by a newer version, naming the migration, and change nothing", async () => {
    const name = schema("newer");
    await (await openPostgresStore(name, 1)).close();
    const known = await withClient(
      async (client) =>
        (await client.query(`SELECT count(*)::int AS n FROM "${name}".kysely_migration`)).rows[0],
    );
    await withClient((client) =>
      client.query(
        `INSERT INTO "${name}".kysely_migration (name, timestamp) VALUES ('2099-01-01-future', 'x')`,
      ),
    );
    await expect(openPostgresStore(name, 1)).rejects.toThrow(
      /schema "newer_[^"]+" has migrations this version of Orisun does not know \(2099-01-01-future\)/,
    );
    const count = await withClient(
      async (client) =>
        (await client.query(`SELECT count(*)::int AS n FROM "${name}".kysely_migration`)).rows[0],
    );
    expect(count).toEqual({ n: known.n + 1 });
  }, 30_000);
});
