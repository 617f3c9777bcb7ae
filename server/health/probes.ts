import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { type Kysely, sql } from "kysely";
import type { Database } from "../store/schema.js";
import type { Dependency } from "./monitor.js";

/**
 * The cheapest query that proves the store answers: a pooled connection, a round trip, a result.
 * Its column name lets an operator (or a test) find it in PostgreSQL's logs and statistics.
 */
export function databaseDependency(db: Kysely<Database>): Dependency {
  return {
    name: "database",
    async probe() {
      await sql`SELECT 1 AS orisun_health_probe`.execute(db);
    },
  };
}

/**
 * NATS answers when the connection is up and JetStream replies to an API request (account info,
 * which touches no stream): a connected NATS without JetStream cannot carry live events.
 */
export function natsDependency(nc: NatsConnection, timeoutMs: number): Dependency {
  // checkAPI off: creating the manager sends nothing, so it never fails and is made once.
  const manager = jetstreamManager(nc, { timeout: timeoutMs, checkAPI: false });
  return {
    name: "nats",
    async probe() {
      if (nc.isClosed()) throw new Error("the NATS connection is closed");
      await (await manager).getAccountInfo();
    },
  };
}
