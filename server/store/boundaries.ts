import { type Kysely, sql } from "kysely";
import { databaseError } from "./database-errors.js";
import type { Database } from "./schema.js";
import type { Position } from "./types.js";

export interface BoundarySummary {
  readonly name: string;
  /** The position of its last event; {0, 0} for a boundary with none. */
  readonly head: Position;
  readonly eventCount: bigint;
  readonly createdAt: Date;
}

/**
 * Every boundary of the deployment, by name (byte order). One row each from orisun_boundaries,
 * whose head and count every write advances: the log is never scanned, and ORISUN_MAX_BOUNDARIES
 * bounds the rows.
 */
export async function listBoundaries(db: Kysely<Database>): Promise<BoundarySummary[]> {
  try {
    const rows = await db
      .selectFrom("orisun_boundaries")
      .select(["name", "last_commit", "last_prepare", "event_count", "created_at"])
      .orderBy(sql`name COLLATE "C"`)
      .execute();
    return rows.map((r) => ({
      name: r.name,
      head: { commit: BigInt(r.last_commit), prepare: BigInt(r.last_prepare) },
      eventCount: BigInt(r.event_count),
      createdAt: r.created_at,
    }));
  } catch (error) {
    throw databaseError(error);
  }
}
