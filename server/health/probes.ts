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
 * which touches no stream): a connected NATS without JetStream cannot carry live events. While
 * the client knows it is disconnected the probe fails at once, rather than after a request
 * that waits out its timeout.
 */
export function natsDependency(nc: NatsConnection, timeoutMs: number): Dependency {
  // checkAPI off: creating the manager sends nothing, so it never fails and is made once.
  const manager = jetstreamManager(nc, { timeout: timeoutMs, checkAPI: false });
  let disconnected = false;
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === "disconnect") disconnected = true;
      else if (status.type === "reconnect") disconnected = false;
    }
  })();
  return {
    name: "nats",
    async probe() {
      if (nc.isClosed()) throw new Error("the NATS connection is closed");
      if (disconnected) throw new Error("NATS is disconnected; the client is reconnecting");
      await (await manager).getAccountInfo();
    },
  };
}
