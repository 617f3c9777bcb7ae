import { type Kysely, sql } from "kysely";
import { APPEND_FUNCTION, APPEND_ROWS_FUNCTION } from "./append-function.js";
import { CRITERIA_FUNCTION, TAG_PROBE_FUNCTION, VIOLATED_FUNCTION } from "./condition-check.js";

interface Migration {
  up(db: Kysely<unknown>): Promise<void>;
}

/** Migrations by date, in code so that they ship inside the build. Never edit a released one. */
const migrations: Record<string, Migration> = {
  "2026-11-28-events": {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable("orisun_boundaries")
        .addColumn("name", "text", (c) => c.primaryKey())
        .addColumn("last_commit", "int8", (c) => c.notNull().defaultTo(0))
        .addColumn("last_prepare", "int8", (c) => c.notNull().defaultTo(0))
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .execute();
      await db.schema
        .createTable("orisun_events")
        .addColumn("boundary", "text", (c) => c.notNull())
        .addColumn("commit_position", "int8", (c) => c.notNull())
        .addColumn("prepare_position", "int8", (c) => c.notNull())
        .addColumn("event_id", "text", (c) => c.notNull())
        .addColumn("event_type", "text", (c) => c.notNull())
        .addColumn("tags", sql`text[]`, (c) => c.notNull())
        .addColumn("data", "json", (c) => c.notNull())
        .addColumn("metadata", "json")
        .addColumn("date_created", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .addPrimaryKeyConstraint("orisun_events_pkey", [
          "boundary",
          "commit_position",
          "prepare_position",
        ])
        .addUniqueConstraint("orisun_events_event_id_key", ["boundary", "event_id"])
        .execute();
      // Reads and condition checks by type walk this index in position order.
      await db.schema
        .createIndex("orisun_events_type_idx")
        .on("orisun_events")
        .columns(["boundary", "event_type", "commit_position", "prepare_position"])
        .execute();
      // "Has all these tags" (`tags @> $1`) for reads and condition checks by tag.
      await db.schema
        .createIndex("orisun_events_tags_idx")
        .on("orisun_events")
        .using("gin")
        .column("tags")
        .execute();
    },
  },
  "2026-12-01-deployment": {
    async up(db: Kysely<unknown>) {
      // One row (see deployment.ts): the identity that names this store's NATS streams and the
      // key that signs its live messages.
      await db.schema
        .createTable("orisun_deployment")
        .addColumn("singleton", "boolean", (c) =>
          c.primaryKey().defaultTo(true).check(sql`singleton`),
        )
        .addColumn("id", "text", (c) => c.notNull())
        .addColumn("secret", "text", (c) => c.notNull())
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .execute();
    },
  },
  // What the JetStream publisher last published of each boundary, written when it lets an idle
  // boundary go: its sweep finds a boundary nobody publishes whose head is past this.
  "2026-12-01-published": {
    async up(db: Kysely<unknown>) {
      await db.schema
        .alterTable("orisun_boundaries")
        .addColumn("published_commit", "int8", (c) => c.notNull().defaultTo(0))
        .addColumn("published_prepare", "int8", (c) => c.notNull().defaultTo(0))
        .execute();
    },
  },
  // Events in each boundary, advanced with its head by every append, so that an overview of the
  // boundaries never counts the log.
  "2026-12-02-event-count": {
    async up(db: Kysely<unknown>) {
      await db.schema
        .alterTable("orisun_boundaries")
        .addColumn("event_count", "int8", (c) => c.notNull().defaultTo(0))
        .execute();
      await sql`UPDATE orisun_boundaries b
        SET event_count = (SELECT count(*) FROM orisun_events e WHERE e.boundary = b.name)`.execute(
        db,
      );
    },
  },
  // Users, their API keys and what each may do (server/auth/). Grants are a JSON list on their
  // principal: always read and written whole, with the principal.
  "2026-12-02-auth-principals": {
    async up(db: Kysely<unknown>) {
      await db.schema
        .createTable("orisun_users")
        .addColumn("name", "text", (c) => c.primaryKey())
        .addColumn("password_hash", "text", (c) => c.notNull())
        .addColumn("admin", "boolean", (c) => c.notNull().defaultTo(false))
        .addColumn("grants", "jsonb", (c) => c.notNull().defaultTo(sql`'[]'::jsonb`))
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .execute();
      await db.schema
        .createTable("orisun_api_keys")
        .addColumn("id", "text", (c) => c.primaryKey())
        .addColumn("user_name", "text", (c) =>
          c.notNull().references("orisun_users.name").onDelete("cascade"),
        )
        .addColumn("name", "text", (c) => c.notNull())
        .addColumn("secret_hash", "text", (c) => c.notNull())
        .addColumn("grants", "jsonb", (c) => c.notNull().defaultTo(sql`'[]'::jsonb`))
        .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
        .execute();
      await db.schema
        .createIndex("orisun_api_keys_user_idx")
        .on("orisun_api_keys")
        .column("user_name")
        .execute();
    },
  },
  // The one-round-trip append: see append-function.ts. It sorts before event-count, whose column
  // it uses: plpgsql resolves names when the function runs, not when it is created.
  "2026-12-02-append-function": {
    async up(db: Kysely<unknown>) {
      await sql.raw(APPEND_FUNCTION).execute(db);
    },
  },
  // The same, with the events as arrays (faster for PostgreSQL to read); the JSON version stays
  // for processes of earlier builds that share the database during an upgrade.
  "2026-12-03-append-rows": {
    async up(db: Kysely<unknown>) {
      await sql.raw(APPEND_ROWS_FUNCTION).execute(db);
    },
  },
  // A larger ANALYZE sample of the tags. With PostgreSQL's default (100: 30,000 rows), a log
  // whose tags are a few common values and many rare ones (entities) often keeps only the common
  // ones as "most common elements"; a rare tag is then estimated at 0.5% of the rows, and a read
  // of two rare tags OR'ed walks the primary key in position order: 366 ms instead of 3 ms at 1M
  // events, after 19 and 11 of two series of 30 ANALYZEs. With 500 (150,000 rows), rare tags
  // always made the list and none of 70 ANALYZEs led to that plan; planning a tags query took
  // 0.080 ms instead of 0.066, ANALYZE of 1M events 0.8 s instead of 0.2 (README, "Reading two
  // rare tags OR'ed").
  "2026-12-03-tags-statistics": {
    async up(db: Kysely<unknown>) {
      await sql`ALTER TABLE orisun_events ALTER COLUMN tags SET STATISTICS 500`.execute(db);
    },
  },
  // Both versions of the append function again: a condition check walks the events after its
  // marker on the primary key first (now in condition-check.ts). On a boundary new since the
  // last ANALYZE, each check had read all of the boundary's events.
  "2026-12-04-recent-checks": {
    async up(db: Kysely<unknown>) {
      await sql.raw(APPEND_FUNCTION).execute(db);
      await sql.raw(APPEND_ROWS_FUNCTION).execute(db);
    },
  },
  // The condition check as functions of its own (condition-check.ts), which the full transaction
  // calls too: its checks were the fenced query alone, which on a boundary new since the last
  // ANALYZE read all of the boundary's events. Both append functions call it.
  "2026-12-05-condition-check": {
    async up(db: Kysely<unknown>) {
      await sql.raw(CRITERIA_FUNCTION).execute(db);
      await sql.raw(VIOLATED_FUNCTION).execute(db);
      await sql.raw(APPEND_FUNCTION).execute(db);
      await sql.raw(APPEND_ROWS_FUNCTION).execute(db);
    },
  },
  // A pending list of 256 kB for the tags index instead of PostgreSQL's 4 MB. GIN adds new
  // entries to an unsorted list that every search of the index reads whole, and the insert that
  // fills it merges it into the index while it holds the boundary's lock. 16 writers of 1-event
  // rows with three tags, on 1M events, pgbench, three alternating 15-second rounds: a search
  // for a tag nobody has: 0.62-0.70 ms at the median instead of 2.4-2.8 (p99 3.8-4.0 ms instead
  // of 12-15); the slowest insert 80-335 ms instead of 520-950; inserts/s 5,750-5,810 against
  // 5,160-5,420. Without a list (fastupdate off): searches 0.18-0.21 ms, but 100-event appends
  // made 0.83x the events/s (README, "The tags index's pending list" under Design notes).
  "2026-12-05-tags-pending-list": {
    async up(db: Kysely<unknown>) {
      await sql`ALTER INDEX orisun_events_tags_idx SET (gin_pending_list_limit = 256)`.execute(db);
    },
  },
  // A condition on a marker over RECENT_CHECK_EVENTS back, whose every criterion names a tag, is
  // checked among the events that carry its tags when they are few, through the GIN index alone
  // (condition-check.ts, SPARSE_CHECK_SQL): with a type too, the fenced query AND'ed the type index.
  "2026-12-05-tags-sparse-check": {
    async up(db: Kysely<unknown>) {
      await sql.raw(TAG_PROBE_FUNCTION).execute(db);
      await sql.raw(VIOLATED_FUNCTION).execute(db);
    },
  },
  // Both versions of the append function again: a NULL payload commits without NOTIFY, which a
  // process that publishes the boundary to JetStream itself asks for (append.ts, quiet commits).
  // Processes of earlier builds always pass a payload, so they notify as before.
  "2026-12-06-quiet-commits": {
    async up(db: Kysely<unknown>) {
      await sql.raw(APPEND_FUNCTION).execute(db);
      await sql.raw(APPEND_ROWS_FUNCTION).execute(db);
    },
  },
};

/** Where applied migrations are recorded: Kysely's table and layout, which earlier builds used. */
const LEDGER = "kysely_migration";

/**
 * Brings the schema up to date in one transaction. An advisory lock keyed by the schema
 * serialises processes that start at once, so each migration is applied exactly once.
 *
 * Kysely's Migrator is not used: it looks for its table by introspecting every table of the
 * database, and that query fails ("schema … does not exist") when another schema of the same
 * database is dropped while it runs. This touches only the store's own schema.
 */
export async function migrate(db: Kysely<unknown>, schema: string): Promise<void> {
  const ledger = sql.table(`${schema}.${LEDGER}`);
  await db.transaction().execute(async (trx) => {
    await sql`SELECT pg_advisory_xact_lock(hashtext(${`orisun_migrate:${schema}`}))`.execute(trx);
    await sql`CREATE TABLE IF NOT EXISTS ${ledger} (
      name varchar(255) PRIMARY KEY, timestamp varchar(255) NOT NULL)`.execute(trx);
    const { rows } = await sql<{ name: string }>`SELECT name FROM ${ledger}`.execute(trx);
    const applied = new Set(rows.map((r) => r.name));
    const unknown = [...applied].filter((name) => !(name in migrations));
    if (unknown.length > 0) {
      throw new Error(
        `schema "${schema}" has migrations this version of Orisun does not know (${unknown.join(", ")}): it was written by a newer version`,
      );
    }
    for (const name of Object.keys(migrations).sort()) {
      if (applied.has(name)) continue;
      await (migrations[name] as Migration).up(trx);
      await sql`INSERT INTO ${ledger} (name, timestamp) VALUES (${name}, ${new Date().toISOString()})`.execute(
        trx,
      );
    }
  });
}
