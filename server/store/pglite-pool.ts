import type { PGlite } from "@electric-sql/pglite";
import type { PostgresPool, PostgresPoolClient } from "kysely";

/**
 * Presents one PGlite instance as a pg-style pool of one connection, so that Kysely's own
 * PostgresDialect, and with it every query of the store, runs unchanged on the embedded database.
 * PGlite has a single session: `connect()` hands it to one caller at a time, which is exactly what
 * a transaction needs.
 */
export function pglitePool(db: PGlite): PostgresPool {
  let tail: Promise<void> = Promise.resolve();
  return {
    options: {},
    async connect(): Promise<PostgresPoolClient> {
      let release!: () => void;
      const previous = tail;
      tail = new Promise<void>((resolve) => {
        release = resolve;
      });
      await previous;
      let released = false;
      const client = {
        async query(sql: string, parameters: readonly unknown[]) {
          const result = await db.query<Record<string, unknown>>(sql, parameters as unknown[]);
          const command = /^\s*(\w+)/.exec(sql)?.[1]?.toUpperCase() ?? "SELECT";
          return {
            command,
            rowCount: result.affectedRows ?? result.rows.length,
            rows: result.rows,
          };
        },
        release() {
          if (!released) {
            released = true;
            release();
          }
        },
      };
      return client as unknown as PostgresPoolClient;
    },
    async end() {
      await tail;
      await db.close();
    },
  };
}
