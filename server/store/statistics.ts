import { type Kysely, sql } from "kysely";
import type { Database } from "./schema.js";

export interface StatisticsOptions {
  /** Analyze once the log grew by this fraction of its last counted size (default 0.1)… */
  readonly growth?: number;
  /** …and by at least this many events (default 10,000)… */
  readonly minEvents?: number;
  /** …and not more often than this (default one minute). */
  readonly minIntervalMs?: number;
}

/**
 * Keeps PostgreSQL's row estimates of the events table fresh. Reads and condition checks choose
 * between the primary key and the tag index by those estimates; with stale ones (autovacuum off,
 * or behind a bulk load) a page read from the middle of a freshly loaded million-event boundary
 * was planned as a bitmap scan of half the boundary plus a sort: 606 ms per page of 1,000,
 * measured, instead of a few ms on the primary key. So the store runs ANALYZE itself when the
 * events it appended grew the table by a tenth since the last count, as autovacuum would, at most
 * once a minute and in the background. ANALYZE samples a fixed number of rows, so it costs about
 * the same at any size.
 */
export class Statistics {
  private appended = 0;
  private counted = 0;
  private lastRun = 0;
  private running: Promise<void> | undefined;

  constructor(
    private readonly db: Kysely<Database>,
    private readonly onError: (error: Error) => void,
    private readonly options: StatisticsOptions = {},
  ) {}

  /** Called after each append of this process with its number of events. */
  grew(events: number): void {
    this.appended += events;
    const due = Math.max(
      this.options.minEvents ?? 10_000,
      this.counted * (this.options.growth ?? 0.1),
    );
    const waited = Date.now() - this.lastRun >= (this.options.minIntervalMs ?? 60_000);
    if (this.running || this.appended < due || !waited) return;
    const appended = this.appended;
    this.appended = 0;
    this.lastRun = Date.now();
    this.running = this.analyze()
      .catch((error: Error) => {
        this.appended += appended;
        this.onError(error);
      })
      .finally(() => {
        this.running = undefined;
      });
  }

  private async analyze(): Promise<void> {
    await sql`ANALYZE orisun_events`.execute(this.db);
    const { rows } = await sql<{ n: number }>`
      SELECT reltuples::float8 AS n FROM pg_class WHERE oid = 'orisun_events'::regclass`.execute(
      this.db,
    );
    this.counted = Math.max(0, rows[0]?.n ?? 0);
  }

  /** Waits for an ANALYZE in flight, so that closing the pool does not cut it. */
  async close(): Promise<void> {
    await this.running;
  }
}
