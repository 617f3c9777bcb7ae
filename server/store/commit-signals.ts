import { type RawBuilder, sql } from "kysely";
import pg from "pg";

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
  private client: pg.Client | undefined;
  private closed = false;
  private retry: NodeJS.Timeout | undefined;

  /**
   * Notifications carry `schema/boundary/instance`: those of other schemas on the database are
   * ignored, and so are this process's own (`instance`), which `emit` announced at commit.
   */
  constructor(
    private readonly url: string | undefined,
    private readonly schema: string,
    private readonly instance: string,
    private readonly onError: (error: Error) => void,
  ) {
    if (url !== undefined) void this.listen();
  }

  on(listener: CommitSignal): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(boundary: string | undefined, local = false): void {
    for (const listener of this.listeners) listener(boundary, local);
  }

  private async listen(): Promise<void> {
    // Its own connection, so no statement or idle timeout of the pool ends it; keepalive notices
    // a dead network under a connection that only ever waits.
    const client = new pg.Client({
      connectionString: this.url,
      connectionTimeoutMillis: 5_000,
      keepAlive: true,
    });
    const lost = (error: Error) => {
      if (this.client !== client) return;
      this.client = undefined;
      void client.end().catch(() => {});
      if (this.closed) return;
      this.onError(error);
      this.retry = setTimeout(() => void this.listen(), 1_000);
    };
    client.on("error", lost);
    client.on("end", () => lost(new Error("LISTEN connection ended")));
    client.on("notification", (n) => {
      const [schema, boundary, instance] = (n.payload ?? "").split("/");
      if (schema === this.schema && boundary && instance !== this.instance) this.emit(boundary);
    });
    this.client = client;
    try {
      await client.connect();
      await client.query("LISTEN orisun_commits");
      this.emit(undefined);
    } catch (error) {
      lost(error as Error);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    const client = this.client;
    this.client = undefined;
    this.listeners.clear();
    await client?.end().catch(() => {});
  }
}

/**
 * The NOTIFY payload of a commit: `schema/boundary/instance`. The schema is that of the committing
 * connection (every pooled connection's search_path); neither it nor a boundary contains "/".
 */
export function notifyPayload(boundary: string, instance: string): RawBuilder<string> {
  return sql<string>`current_schema() || '/' || ${boundary} || '/' || ${instance}`;
}
