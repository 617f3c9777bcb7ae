/**
 * What a spawned server leaves behind: its schema in PostgreSQL and the JetStream streams named
 * from its deployment id.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { sql } from "./references.js";

/** The PostgreSQL and NATS that spawned servers use. */
export const PG_URL = process.env.BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";
export const NATS_URL = process.env.BENCH_NATS_URL ?? "nats://127.0.0.1:4222";

/** The deployment id that names a server's JetStream streams, stored in its schema. */
export async function deploymentId(pgUrl: string, schema: string): Promise<string> {
  const { rows } = await sql(pgUrl, `SELECT id FROM "${schema}".orisun_deployment`);
  return String(rows[0]?.id);
}

/** Deletes the JetStream streams a spawned server made (named from its deployment id). */
export async function deleteStreams(natsUrl: string, deployment: string): Promise<void> {
  const nc = await connect({ servers: natsUrl });
  try {
    const jsm = await jetstreamManager(nc);
    for await (const name of jsm.streams.names()) {
      if (
        name.startsWith(`ORISUN_EVENTS_${deployment}_`) ||
        name === `ORISUN_PUBSUB_${deployment}`
      ) {
        await jsm.streams.delete(name);
      }
    }
  } finally {
    await nc.close();
  }
}

/** Drops a stopped server's schema and deletes its streams. */
export async function removeServerData(
  pgUrl: string,
  natsUrl: string,
  schema: string,
): Promise<void> {
  const deployment = await deploymentId(pgUrl, schema);
  await sql(pgUrl, `DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await deleteStreams(natsUrl, deployment);
}
