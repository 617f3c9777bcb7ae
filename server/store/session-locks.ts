import pg from "pg";
import { StoreError } from "./errors.js";
import { sessionConfig } from "./pg-session.js";

export interface HeldLock {
  /** Aborted when the lock is lost (its database session died); the holder must stop. */
  readonly lost: AbortSignal;
  release(): Promise<void>;
}

/**
 * Named locks exclusive across every server process on one database: exclusive subscriber names,
 * the per-boundary publisher election. On PostgreSQL they are session advisory locks held on one
 * dedicated connection, so a process that dies (even `kill -9`) frees its locks as soon as
 * PostgreSQL notices the closed socket. PGlite serves one process, so a set in memory is exact.
 */
export class SessionLocks {
  private readonly held = new Map<string, AbortController>();
  private session: Promise<pg.Client> | undefined;
  private closed = false;
  private tail: Promise<void> = Promise.resolve();

  /**
   * `namespace` (the store's schema) is part of every lock's key: deployments that share a
   * database in different schemas must not take each other's publisher or subscriber locks.
   */
  constructor(
    private readonly url: string | undefined,
    private readonly namespace: string,
  ) {}

  /**
   * The text whose hashtextextended(text, 0) keys the lock on PostgreSQL (a session advisory lock
   * as listed in pg_locks), for queries that must tell which locks are held.
   */
  keyText(lockName: string): string {
    return `${this.namespace}:${lockName}`;
  }

  /** The lock, or undefined when another holder has it. */
  async tryAcquire(lockName: string): Promise<HeldLock | undefined> {
    const name = this.keyText(lockName);
    if (this.closed) throw new StoreError("unavailable", "the store is closing");
    if (this.held.has(name)) return undefined;
    const lost = new AbortController();
    this.held.set(name, lost);
    try {
      if (this.url !== undefined) {
        const client = await this.connect();
        const ok = await this.serially(() =>
          client.query<{ ok: boolean }>(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS ok",
            [name],
          ),
        );
        if (!ok.rows[0]?.ok) {
          this.held.delete(name);
          return undefined;
        }
      }
    } catch (error) {
      this.held.delete(name);
      throw new StoreError("unavailable", "the database is unavailable; retry later", undefined, {
        cause: error,
      });
    }
    let released = false;
    return {
      lost: lost.signal,
      release: async () => {
        if (released) return;
        released = true;
        if (this.held.get(name) !== lost) return;
        this.held.delete(name);
        if (this.url === undefined || lost.signal.aborted) return;
        const client = await this.session?.catch(() => undefined);
        if (!client) return;
        await this.serially(() =>
          client.query("SELECT pg_advisory_unlock(hashtextextended($1, 0))", [name]),
        ).catch(() => {});
      },
    };
  }

  /** One query at a time on the session: pg deprecates overlapping queries on one client. */
  private serially<T>(query: () => Promise<T>): Promise<T> {
    const result = this.tail.then(query);
    this.tail = result.then(
      () => {},
      () => {},
    );
    return result;
  }

  private connect(): Promise<pg.Client> {
    if (this.session) return this.session;
    // So that a dead network is noticed on both ends, not only a closed socket.
    const client = new pg.Client(sessionConfig(this.url));
    const session = client.connect().then(() => client);
    this.session = session;
    const drop = () => {
      if (this.session === session) this.dropSession(client);
    };
    client.on("error", drop);
    client.on("end", drop);
    session.catch(drop);
    return session;
  }

  /** The session died: every lock it held is gone, so every holder is told. */
  private dropSession(client: pg.Client): void {
    this.session = undefined;
    void client.end().catch(() => {});
    const holders = [...this.held.values()];
    this.held.clear();
    for (const holder of holders) holder.abort(new Error("lock session lost"));
  }

  async close(): Promise<void> {
    this.closed = true;
    const session = this.session;
    this.session = undefined;
    for (const holder of this.held.values()) holder.abort(new Error("closing"));
    this.held.clear();
    const client = await session?.catch(() => undefined);
    await client?.end().catch(() => {});
  }
}
