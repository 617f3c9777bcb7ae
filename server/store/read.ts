import { type Kysely, sql } from "kysely";
import { positionSql, querySql } from "./query-sql.js";
import { type Database, decodeTag } from "./schema.js";
import { type Position, type ReadRequest, START, type StoredEvent } from "./types.js";

/** Matching events of a boundary in `direction` order, starting at `from` inclusive. */
export async function readEvents(
  db: Kysely<Database>,
  request: ReadRequest,
): Promise<StoredEvent[]> {
  const direction = request.direction;
  let query = db
    .selectFrom("orisun_events")
    .select([
      "event_id",
      "event_type",
      "tags",
      sql<string>`data::text`.as("data"),
      sql<string | null>`metadata::text`.as("metadata"),
      "commit_position",
      "prepare_position",
      "date_created",
    ])
    .where("boundary", "=", request.boundary)
    .where(querySql(request.query));
  if (request.from !== undefined) {
    query = query.where(positionSql(direction === "asc" ? ">=" : "<=", request.from));
  }
  const rows = await query
    .orderBy("commit_position", direction)
    .orderBy("prepare_position", direction)
    .limit(request.count)
    .execute();
  return rows.map((row) => ({
    boundary: request.boundary,
    id: row.event_id,
    type: row.event_type,
    tags: row.tags.map(decodeTag),
    data: row.data,
    metadata: row.metadata ?? "",
    position: { commit: BigInt(row.commit_position), prepare: BigInt(row.prepare_position) },
    createdAt: row.date_created,
  }));
}

/** The position of the boundary's last event; START for a boundary with no events. */
export async function headPosition(db: Kysely<Database>, boundary: string): Promise<Position> {
  const row = await db
    .selectFrom("orisun_boundaries")
    .select(["last_commit", "last_prepare"])
    .where("name", "=", boundary)
    .executeTakeFirst();
  return row ? { commit: BigInt(row.last_commit), prepare: BigInt(row.last_prepare) } : START;
}
