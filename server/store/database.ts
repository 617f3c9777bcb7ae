import { mkdirSync } from "node:fs";
import { join } from "node:path";
import type { PGlite } from "@electric-sql/pglite";
import { Kysely, PostgresDialect } from "kysely";
import pg from "pg";
import { migrate } from "./migrations.js";
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
}

export interface OpenDatabase {
  readonly db: Kysely<Database>;
  readonly embedded: boolean;
  /** A raw connection pool for LISTEN and other session-bound work; undefined when embedded. */
  readonly pool: pg.Pool | undefined;
  readonly pglite: PGlite | undefined;
}

const INT8 = 20;
const JSON_OID = 114;

/** Opens PostgreSQL (or PGlite), creates the schema if needed and runs the migrations. */
export async function openDatabase(options: DatabaseOptions): Promise<OpenDatabase> {
  if (options.url === undefined) {
    const dir = join(options.dataDir, "pglite");
    mkdirSync(dir, { recursive: true });
    // int8 as decimal strings, like pg: positions exceed 2^53 long before they exceed int8.
    const pglite = await openDurablePGlite(dir, {
      parsers: { [INT8]: (v: string) => v, [JSON_OID]: (v: string) => v },
    });
    await pglite.exec(
      `CREATE SCHEMA IF NOT EXISTS "${options.schema}"; SET search_path TO "${options.schema}"`,
    );
    const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool: pglitePool(pglite) }) });
    await migrate(db as Kysely<unknown>, options.schema);
    return { db, embedded: true, pool: undefined, pglite };
  }

  await ensureSchema(options.url, options.schema);
  const pool = new pg.Pool({
    connectionString: options.url,
    max: options.poolSize,
    options: `-c search_path="${options.schema}"`,
    connectionTimeoutMillis: 5_000,
  });
  pool.on("error", options.onIdleError);
  // pg-pool listens for errors only on idle clients; one that dies while checked out (between
  // the queries of a transaction) would emit an unhandled 'error' and crash the process. Its
  // query fails on its own, and the pool discards the client when it comes back.
  pool.on("connect", (client) => client.on("error", options.onIdleError));
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  await migrate(db as Kysely<unknown>, options.schema);
  return { db, embedded: false, pool, pglite: undefined };
}

async function ensureSchema(url: string, schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  await client.connect();
  try {
    // Serialise concurrent starts: CREATE SCHEMA IF NOT EXISTS itself can race.
    await client.query("SELECT pg_advisory_lock(hashtext('orisun_schema'))");
    await client.query(`CREATE SCHEMA IF NOT EXISTS "${schema}"`);
  } finally {
    await client.end();
  }
}
