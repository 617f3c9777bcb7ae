import { type Kysely, type RawBuilder, sql } from "kysely";
import { ListenConnection } from "./listen-connection.js";
import type { Database } from "./schema.js";

/**
 * `boundary` committed something; undefined: anything may have changed (after a reconnect).
 * `local`: the commit was this process's own, and its events went to EventStore.onCommit first.
 */
export type CommitSignal = (boundary: string | undefined, local: boolean) => void;

/**
 * Tells who follows the log that a boundary has new commits: this process's own commits at once,
 * other processes' through `LISTEN orisun_commits` (PostgreSQL only; PGlite has one process).
 * Signals are hints: a listener always reads the store to learn what changed, so a duplicate or
 * a signal lost while reconnecting costs nothing but a read (reconnecting signals `undefined`).
 */
export class CommitSignals {
  private readonly listeners = new Set<CommitSignal>();
  private readonly connection: ListenConnection | undefined;

  /**
   * Notifications carry `schema/boundary/instance`: those of other schemas on the database are
   * ignored, and so are this process's own (`instance`), which `emit` announced at commit.
   */
  constructor(
    url: string | undefined,
    schema: string,
    instance: string,
    onError: (error: Error) => void,
  ) {
    this.connection =
      url === undefined
        ? undefined
        : new ListenConnection({
            url,
            channel: "orisun_commits",
            retryMs: 1_000,
            onNotice: (payload) => {
              const [from, boundary, by] = payload.split("/");
              if (from === schema && boundary && by !== instance) this.emit(boundary);
            },
            onUp: () => this.emit(undefined),
            onError,
          });
  }

  /**
   * Listening now, or nothing to listen to (the embedded database). Each time the connection comes
   * up, listeners get `undefined` (anything may have changed), so until then a signal is still due.
   */
  get listening(): boolean {
    return this.connection?.listening ?? true;
  }

  on(listener: CommitSignal): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(boundary: string | undefined, local = false): void {
    for (const listener of this.listeners) listener(boundary, local);
  }

  async close(): Promise<void> {
    this.listeners.clear();
    await this.connection?.close();
  }
}

/**
 * The NOTIFY payload of a commit: `schema/boundary/instance`. The schema is that of the committing
 * connection (every pooled connection's search_path); neither it nor a boundary contains "/".
 */
export function notifyPayload(boundary: string, instance: string): RawBuilder<string> {
  return sql<string>`current_schema() || '/' || ${boundary} || '/' || ${instance}`;
}

/** The same payload as SQL text over two text expressions, for a statement written by hand. */
export function notifyPayloadText(boundary: string, instance: string): string {
  return `current_schema() || '/' || ${boundary} || '/' || ${instance}`;
}

/**
 * The NOTIFY of commits `instance` made to `boundary` earlier without one (quiet commits, see
 * Appender.quiet), as a statement of its own. A hint, like every NOTIFY: a failure leaves them to
 * the publishers' sweep and idle reads, so it is swallowed.
 */
export async function notifyCommitted(
  db: Kysely<Database>,
  boundary: string,
  instance: string,
): Promise<void> {
  try {
    await sql`SELECT pg_notify('orisun_commits', ${notifyPayload(boundary, instance)})`.execute(db);
  } catch {
    // The publishers' sweep and their idle reads find the commits without it.
  }
}
