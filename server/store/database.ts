import { mkdirSync } from "node:fs";
import { join } from "node:path";
import type { PGlite } from "@electric-sql/pglite";
import { Kysely, PostgresDialect } from "kysely";
import pg from "pg";
import type { AppendConnections } from "./append.js";
import { DEFAULT_MIN_FREE_BYTES, DiskSpaceGuard } from "./disk-space.js";
import { migrate } from "./migrations.js";
import { guardedPool } from "./pg-pool.js";
import { KEEPALIVE_MS } from "./pg-session.js";
import { openDurablePGlite } from "./pglite-durable.js";
import { pglitePool } from "./pglite-pool.js";
import type { Database } from "./schema.js";

export interface DatabaseOptions {
  /** PostgreSQL URL; undefined: embedded PGlite in `dataDir`. */
  readonly url: string | undefined;
  readonly schema: string;
  readonly poolSize: number;
  readonly dataDir: string;
  /** Called for errors of idle pooled connections, which would otherwise crash the process. */
  readonly onIdleError: (error: Error) => void;
  /** PostgreSQL only; defaults to DEFAULT_TIMEOUTS. */
  readonly timeouts?: DatabaseTimeouts;
  /** Embedded only: below this many bytes free on the data folder's disk, writes are refused (disk-space.ts); 0: never. Default 128 MiB. */
  readonly minFreeBytes?: number;
  /** Embedded only: the data folder's disk crossed that minimum, either way. */
  readonly onDiskSpace?: (low: boolean, freeBytes: number) => void;
  /**
   * Embedded only: PGlite raised PANIC and will run no statement again (pglite-pool.ts); later
   * queries fail at once. The server exits on it, so that its next start recovers from the WAL.
   */
  readonly onPanic?: (error: Error) => void;
}

/** Bounds on every pooled PostgreSQL connection, so that a frozen or lost server fails callers. */
export interface DatabaseTimeouts {
  /** statement_timeout on the server; the client gives up a little later (a frozen server never times out). */
  readonly statementMs: number;
  readonly lockMs: number;
  readonly idleInTransactionMs: number;
  /** Opening a connection, and waiting for a free one. */
  readonly connectMs: number;
}

export const DEFAULT_TIMEOUTS: DatabaseTimeouts = {
  statementMs: 10_000,
  lockMs: 5_000,
  idleInTransactionMs: 60_000,
  connectMs: 5_000,
};

/** How long after statement_timeout the client stops waiting: the server's own answer comes first. */
const CLIENT_MARGIN_MS = 1_000;

export interface OpenDatabase {
  readonly db: Kysely<Database>;
  /** The pool `db` runs on, for the one statement that skips the query builder (append.ts). */
  readonly connections: AppendConnections;
  readonly embedded: boolean;
  /** A raw connection pool for LISTEN and other session-bound work; undefined when embedded. */
  readonly pool: pg.Pool | undefined;
  readonly pglite: PGlite | undefined;
  /** Embedded only: refuses writes while the data folder's disk is nearly full. */
  readonly diskSpace: DiskSpaceGuard | undefined;
}

const INT8 = 20;
const JSON_OID = 114;

/** Opens PostgreSQL (or PGlite), creates the schema if needed and runs the migrations. */
export async function openDatabase(options: DatabaseOptions): Promise<OpenDatabase> {
  if (options.url === undefined) {
    const dir = join(options.dataDir, "pglite");
    mkdirSync(dir, { recursive: true });
    // Before PGlite writes anything: a fresh folder takes about 40 MB.
    const diskSpace = await DiskSpaceGuard.start({
      dir,
      minFreeBytes: options.minFreeBytes ?? DEFAULT_MIN_FREE_BYTES,
      onChange: options.onDiskSpace,
    });
    try {
      diskSpace.check();
    } catch (error) {
      diskSpace.close();
      throw error;
    }
    // int8 as decimal strings, like pg: positions exceed 2^53 long before they exceed int8.
    const pglite = await openDurablePGlite(dir, {
      parsers: { [INT8]: (v: string) => v, [JSON_OID]: (v: string) => v },
    });
    await pglite.exec(
      `CREATE SCHEMA IF NOT EXISTS "${options.schema}"; SET search_path TO "${options.schema}"`,
    );
    const connections = pglitePool(pglite, options.onPanic ?? (() => {}));
    const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: connections }) });
    await migrate(db as Kysely<unknown>, options.schema);
    return { db, connections, embedded: true, pool: undefined, pglite, diskSpace };
  }

  const timeouts = options.timeouts ?? DEFAULT_TIMEOUTS;
  await ensureSchema(options.url, options.schema, timeouts.connectMs);
  // Migrations may rewrite a large table: they run on a connection of their own, without the
  // statement timeout meant for requests.
  const migrator = new Kysely<unknown>({
    dialect: new PostgresDialect({
      pool: new pg.Pool({
        connectionString: options.url,
        max: 1,
        options: `-c search_path="${options.schema}"`,
        connectionTimeoutMillis: timeouts.connectMs,
      }),
    }),
  });
  try {
    await migrate(migrator, options.schema);
  } finally {
    await migrator.destroy();
  }
  const pool = new pg.Pool({
    connectionString: options.url,
    max: options.poolSize,
    options: [
      `-c search_path="${options.schema}"`,
      `-c statement_timeout=${timeouts.statementMs}`,
      `-c lock_timeout=${timeouts.lockMs}`,
      `-c idle_in_transaction_session_timeout=${timeouts.idleInTransactionMs}`,
      // No JIT compilation: PostgreSQL compiles any statement whose estimate passes 100,000, and a
      // sparse check of 100 criteria spent 157 of its 169 ms compiling (README, "Many criteria").
      "-c jit=off",
    ].join(" "),
    connectionTimeoutMillis: timeouts.connectMs,
    query_timeout: timeouts.statementMs + CLIENT_MARGIN_MS,
    keepAlive: true,
    keepAliveInitialDelayMillis: KEEPALIVE_MS,
  });
  pool.on("error", options.onIdleError);
  // pg-pool listens for errors only on idle clients; one that dies while checked out (between
  // the queries of a transaction) would emit an unhandled 'error' and crash the process. Its
  // query fails on its own, and the pool discards the client when it comes back.
  pool.on("connect", (client) => client.on("error", options.onIdleError));
  const connections = guardedPool(pool);
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: connections }) });
  return { db, connections, embedded: false, pool, pglite: undefined, diskSpace: undefined };
}

async function ensureSchema(url: string, schema: string, connectMs: number): Promise<void> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: connectMs });
  await client.connect();
  try {
    // Serialise concurrent starts: CREATE SCHEMA IF NOT EXISTS itself can race.
    await client.query("SELECT pg_advisory_lock(hashtext('orisun_schema'))");
    await client.query(`CREATE SCHEMA IF NOT EXISTS "${schema}"`);
  } finally {
    await client.end();
  }
}
