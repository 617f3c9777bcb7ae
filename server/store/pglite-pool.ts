import type { PGlite } from "@electric-sql/pglite";
import type { PostgresPool, PostgresPoolClient } from "kysely";
import { CALL_APPEND } from "./append-function.js";

/**
 * Event-loop turns a transaction waits before BEGIN. PGlite runs in this thread and its queries
 * resolve through microtasks alone, so a transaction runs from BEGIN through COMMIT, and the WAL
 * fsync of the commit, without Node reading a socket. Appends that arrived meanwhile then reached
 * the appender one by one after its queue had emptied, and each became a group-commit batch, so a
 * WAL sync, of its own: 208 syncs for 208 appends by 1, 8 and 64 clients (strace). A few turns let
 * the requests already received reach the queue, so the next batch takes them together: 16
 * clients' 160 appends then made 28 syncs, and one client's appends took as long as before.
 * The one-statement append (CALL_APPEND) is a transaction of its own and waits likewise.
 */
const TURNS_BEFORE_BEGIN = 4;

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** PostgreSQL's PANIC: the database must restart. A server's postmaster restarts it; here nothing can. */
const isPanic = (error: unknown) => (error as { severity?: unknown } | null)?.severity === "PANIC";

/**
 * Presents one PGlite instance as a pg-style pool of one connection, so that Kysely's own
 * PostgresDialect, and with it every query of the store, runs unchanged on the embedded database.
 * PGlite has a single session: `connect()` hands it to one caller at a time, which is exactly what
 * a transaction needs.
 *
 * After a PANIC (a failed WAL fsync: "could not fsync file … I/O error") PGlite answers no
 * statement again: the next one spun in its WebAssembly on this thread, and the whole process
 * stopped answering, SIGTERM included. So the PANIC is the last statement: `onPanic` is told (the
 * server exits, and the next start recovers from the WAL, as PostgreSQL does after a crash), every
 * later query fails at once, and `end()` leaves PGlite alone.
 */
export function pglitePool(db: PGlite, onPanic: (error: Error) => void): PostgresPool {
  let tail: Promise<void> = Promise.resolve();
  let panic: Error | undefined;
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
          if (/^\s*begin\b/i.test(sql) || sql.startsWith(CALL_APPEND)) {
            for (let i = 0; i < TURNS_BEFORE_BEGIN; i++) await nextTurn();
          }
          if (panic) throw panic;
          let result: Awaited<ReturnType<typeof db.query<Record<string, unknown>>>>;
          try {
            result = await db.query<Record<string, unknown>>(sql, parameters as unknown[]);
          } catch (error) {
            if (isPanic(error) && !panic) {
              panic = error as Error;
              onPanic(panic);
            }
            throw error;
          }
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
      if (panic) return;
      await tail;
      await db.close();
    },
  };
}
