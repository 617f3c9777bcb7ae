import type pg from "pg";

/** First TCP keepalive probe of an idle connection, so that a dead network is noticed. */
export const KEEPALIVE_MS = 10_000;

/**
 * PostgreSQL's side of the same: probe an idle client after 10 s, every 5 s, and give up after 3
 * unanswered probes. A session that holds advisory locks is idle by design; without this, a holder
 * whose network died silently would keep its locks (a boundary's publisher election, an exclusive
 * subscriber name) for as long as the operating system's default, two hours on Linux.
 */
const SERVER_KEEPALIVES =
  "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3";

/**
 * The connection of a long-lived session that is mostly idle and must notice a dead peer: the
 * lock session (session-locks.ts) and the LISTEN connection (listen-connection.ts). pg's
 * `keepAlive` alone keeps the system's first probe, two hours on Linux.
 */
export function sessionConfig(url: string | undefined): pg.ClientConfig {
  return {
    connectionString: url,
    connectionTimeoutMillis: 5_000,
    keepAlive: true,
    keepAliveInitialDelayMillis: KEEPALIVE_MS,
    options: SERVER_KEEPALIVES,
  };
}
