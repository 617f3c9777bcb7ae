import { type Kysely, sql } from "kysely";
import { databaseError } from "./database-errors.js";
import { quote, StoreError } from "./errors.js";
import type { Database } from "./schema.js";

/** Boundaries a deployment may have unless configured otherwise (ORISUN_MAX_BOUNDARIES). */
export const DEFAULT_MAX_BOUNDARIES = 10_000;

/**
 * Holds the number of boundaries of a deployment to a cap. A boundary is made by its first
 * write; before that write, this makes its row in a transaction of its own that counts the rows
 * under an advisory lock, so that creations from every process on the database take turns and
 * the cap holds exactly. Only creations pay for it: names seen to exist are remembered (at most
 * the cap of them), so later writes cost nothing.
 */
export class BoundaryCap {
  private readonly known = new Set<string>();
  /**
   * Creations under way: concurrent first writes to one boundary wait for the same one, so they
   * reach the appender in the order they arrived (and make one transaction, not one each).
   */
  private readonly creating = new Map<string, Promise<void>>();

  constructor(
    private readonly db: Kysely<Database>,
    private readonly schema: string,
    /** ORISUN_MAX_BOUNDARIES. */
    readonly max: number,
  ) {}

  /**
   * Resolves once `boundary` exists; StoreError "limit_reached" when it would be one too many, and
   * "deadline_exceeded" as soon as `signal` aborts first (no event is written then; the row may
   * still be made, which leaves an empty boundary).
   */
  async admit(boundary: string, signal?: AbortSignal): Promise<void> {
    if (this.known.has(boundary)) return;
    if (signal?.aborted) throw abandoned();
    let stopWaiting = () => {};
    const aborted = new Promise<never>((_, reject) => {
      const onAbort = () => reject(abandoned());
      signal?.addEventListener("abort", onAbort, { once: true });
      stopWaiting = () => signal?.removeEventListener("abort", onAbort);
    });
    let creation = this.creating.get(boundary);
    if (!creation) {
      creation = this.create(boundary).finally(() => this.creating.delete(boundary));
      this.creating.set(boundary, creation);
    }
    try {
      await Promise.race([creation, aborted]);
    } finally {
      stopWaiting();
    }
  }

  private async create(boundary: string): Promise<void> {
    try {
      await this.db.transaction().execute(async (trx) => {
        const existing = await trx
          .selectFrom("orisun_boundaries")
          .select("name")
          .where("name", "=", boundary)
          .executeTakeFirst();
        if (existing) return;
        await sql`SELECT pg_advisory_xact_lock(hashtext(${`orisun_boundaries:${this.schema}`}))`.execute(
          trx,
        );
        // A statement of its own after the lock: its snapshot holds every earlier creation.
        const { rows } = await sql<{ n: string; present: boolean | null }>`
          SELECT count(*)::text AS n, bool_or(name = ${boundary}) AS present
          FROM orisun_boundaries`.execute(trx);
        const count = Number(rows[0]?.n ?? 0);
        if (rows[0]?.present) return;
        if (count >= this.max) {
          throw new StoreError(
            "limit_reached",
            `${quote(boundary)} would be a new boundary, and the deployment has reached ORISUN_MAX_BOUNDARIES (${this.max}) boundaries; write to an existing boundary`,
            "boundary",
          );
        }
        await sql`INSERT INTO orisun_boundaries (name) VALUES (${boundary})
          ON CONFLICT (name) DO NOTHING`.execute(trx);
      });
    } catch (error) {
      throw databaseError(error);
    }
    this.known.add(boundary);
  }

  /**
   * For a transaction that made the rows of `created` itself (an import, which holds one
   * connection and cannot wait for admit's own transaction): takes the creation lock and counts
   * every row it sees, its own uncommitted ones included, so the cap holds exactly. Called just
   * before the commit, which releases the lock; `remember` the names once committed.
   */
  async checkCreated(trx: Kysely<Database>, created: readonly string[]): Promise<void> {
    const first = created[0];
    if (first === undefined) return;
    await sql`SELECT pg_advisory_xact_lock(hashtext(${`orisun_boundaries:${this.schema}`}))`.execute(
      trx,
    );
    const { rows } = await sql<{ n: string }>`
      SELECT count(*)::text AS n FROM orisun_boundaries`.execute(trx);
    if (Number(rows[0]?.n ?? 0) > this.max) {
      throw new StoreError(
        "limit_reached",
        `the import makes ${created.length} new boundaries (the first ${quote(first)}), and the deployment would have more than ORISUN_MAX_BOUNDARIES (${this.max}); nothing was written`,
        "boundary",
      );
    }
  }

  /** Boundaries known to exist (committed by an import): later writes to them cost nothing. */
  remember(boundaries: Iterable<string>): void {
    for (const boundary of boundaries) this.known.add(boundary);
  }
}

function abandoned(): StoreError {
  return new StoreError(
    "deadline_exceeded",
    "the request ended (its deadline passed or it was cancelled) before the append started; nothing was written",
  );
}
