import { type Kysely, sql } from "kysely";
import { type Migration, type MigrationProvider, Migrator } from "kysely/migration";

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
};

const provider: MigrationProvider = { getMigrations: async () => migrations };

/**
 * Brings the schema up to date. Kysely's migrator holds a lock while it runs, so two processes
 * starting at once apply each migration exactly once.
 */
export async function migrate(db: Kysely<unknown>, schema: string): Promise<void> {
  // The migrator's own tables live in the store's schema, so that stores in different schemas of
  // one database migrate independently.
  const migrator = new Migrator({ db, provider, migrationTableSchema: schema });
  const { error } = await migrator.migrateToLatest();
  if (error) throw error;
}
