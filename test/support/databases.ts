import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import pg from "pg";
import { EventStore, type EventStoreOptions } from "../../server/store/event-store.js";
import { noteSchema, tempDir } from "./temp.js";

/** The PostgreSQL the tests use; CI starts it on 127.0.0.1:5432 with trust auth. */
export const PG_URL = process.env.ORISUN_TEST_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";
/** The database PG_URL names (`test` unless ORISUN_TEST_PG_URL says otherwise). */
/** Where PG_URL's server listens, for tests that put a proxy in front of it. */
export const PG_HOST = new URL(PG_URL).hostname;
export const PG_PORT = Number(new URL(PG_URL).port || 5432);
/** PG_URL as seen through a proxy listening on 127.0.0.1:`port`. */
export function pgUrlVia(port: number): string {
  const url = new URL(PG_URL);
  url.hostname = "127.0.0.1";
  url.port = String(port);
  return url.toString();
}

export const TEST_DATABASE = decodeURIComponent(new URL(PG_URL).pathname.slice(1));

let counter = 0;
/** A schema name no other test run or file uses. */
export function freshSchema(prefix = "t"): string {
  counter++;
  const schema = `${prefix}_${process.pid}_${Date.now().toString(36)}_${counter}`;
  noteSchema(schema);
  return schema;
}

export function freshDataDir(): string {
  return tempDir("orisun-test-");
}

/** The NATS JetStream the tests use; CI starts it on 127.0.0.1:4222. */
export const NATS_URL = process.env.ORISUN_TEST_NATS_URL ?? "nats://127.0.0.1:4222";

/** Runs `work` on a connection to `database` of the test PostgreSQL (e.g. "postgres" to create one). */
export async function withPostgres<T>(
  database: string,
  work: (client: pg.Client) => Promise<T>,
): Promise<T> {
  const url = new URL(PG_URL);
  url.pathname = `/${database}`;
  const client = new pg.Client({ connectionString: url.toString() });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

/** The id that names the JetStream streams of the deployment in `schema`; undefined if none. */
export async function deploymentId(schema: string, url = PG_URL): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ id: string }>(
      `SELECT id FROM "${schema}".orisun_deployment`,
    );
    return rows[0]?.id;
  } catch {
    return undefined; // no such schema or table: nothing was deployed there
  } finally {
    await client.end();
  }
}

/**
 * Drops the schema, and the JetStream streams that servers on it made (named from the deployment
 * id stored in the schema), so that test runs do not pile streams up on the NATS server.
 */
export async function dropSchema(schema: string, url = PG_URL): Promise<void> {
  const deployment = await deploymentId(schema, url);
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } finally {
    await client.end();
  }
  // Servers name streams after the deployment; tests that build publishers, sources or pub/sub
  // themselves name them after the schema.
  await deleteStreams(deployment === undefined ? [schema] : [deployment, schema]);
}

export async function deleteStreams(namespaces: readonly string[]): Promise<void> {
  let nc: NatsConnection;
  try {
    nc = await connect({ servers: NATS_URL, timeout: 2_000, reconnect: false });
  } catch {
    return; // NATS is down (a test may have stopped it): nothing to tidy there
  }
  try {
    const jsm = await jetstreamManager(nc);
    for await (const name of jsm.streams.names()) {
      const ours = namespaces.some(
        (ns) => name.startsWith(`ORISUN_EVENTS_${ns}_`) || name === `ORISUN_PUBSUB_${ns}`,
      );
      if (ours) {
        await jsm.streams.delete(name).catch(() => {});
      }
    }
  } catch {
    // Best effort, like the DROP above being IF EXISTS.
  } finally {
    await nc.close();
  }
}

export interface StoreTarget {
  readonly name: "pglite" | "postgres";
  /** Opens a store on a fresh, empty database (schema or data folder). */
  open(): Promise<{ store: EventStore; cleanup: () => Promise<void> }>;
}

/** The server's group-commit defaults, for stores the tests open themselves. */
export const GROUP_COMMIT = { maxEvents: 10_000, maxBytes: 8 * 1024 * 1024, maxWaitMs: 5 };

/**
 * Resolves once the store's LISTEN connection is up. Its coming up signals "anything may have
 * changed", on which feeds and publishers read the log: a test that counts their reads starts
 * after it, or a slow connection (a busy machine) lands that read in the count.
 */
export async function untilListening(store: EventStore): Promise<void> {
  while (!store.signals.listening) await new Promise((r) => setTimeout(r, 10));
}

/** A store on the test PostgreSQL in `schema` (created and migrated if new). */
export function openPostgresStore(schema: string, poolSize = 10): Promise<EventStore> {
  return EventStore.open({
    url: PG_URL,
    schema,
    poolSize,
    dataDir: freshDataDir(),
    onIdleError: () => {},
    groupCommit: GROUP_COMMIT,
  });
}

/** The same suites run against both storage configurations. */
export const storeTargets: readonly StoreTarget[] = [
  {
    name: "pglite",
    async open() {
      const options: EventStoreOptions = {
        url: undefined,
        schema: "public",
        poolSize: 1,
        dataDir: freshDataDir(),
        onIdleError: () => {},
        groupCommit: GROUP_COMMIT,
      };
      const store = await EventStore.open(options);
      return { store, cleanup: () => store.close() };
    },
  },
  {
    name: "postgres",
    async open() {
      const schema = freshSchema();
      const store = await openPostgresStore(schema);
      return {
        store,
        cleanup: async () => {
          await store.close();
          await dropSchema(schema);
        },
      };
    },
  },
];
