import { type Kysely, type RawBuilder, sql } from "kysely";
import { type Database, encodeTag, epochMillisSql } from "./schema.js";
import type { Criterion, Position, Query, ReadRequest } from "./types.js";

/**
 * The SQL twin of matcher.ts. Each criterion becomes `event_type = ANY(types) AND tags @> tags`,
 * served by orisun_events_type_idx and the GIN index on tags; criteria are OR'ed.
 */
function criterionSql(criterion: Criterion): RawBuilder<boolean> {
  const parts: RawBuilder<boolean>[] = [];
  if (criterion.types.length === 1) parts.push(sql<boolean>`event_type = ${criterion.types[0]}`);
  else if (criterion.types.length > 1) {
    parts.push(sql<boolean>`event_type = ANY(${[...criterion.types]}::text[])`);
  }
  if (criterion.tags.length > 0) {
    parts.push(sql<boolean>`tags @> ${criterion.tags.map(encodeTag)}::text[]`);
  }
  return sql<boolean>`(${sql.join(parts, sql` AND `)})`;
}

export function querySql(query: Query): RawBuilder<boolean> {
  if (query.length === 0) return sql<boolean>`TRUE`;
  return sql<boolean>`(${sql.join(query.map(criterionSql), sql` OR `)})`;
}

/** `(commit_position, prepare_position) <op> (commit, prepare)`: a row comparison the primary key serves. */
export function positionSql(op: ">" | ">=" | "<=", position: Position): RawBuilder<boolean> {
  return sql<boolean>`(commit_position, prepare_position) ${sql.raw(op)} (${position.commit.toString()}::int8, ${position.prepare.toString()}::int8)`;
}

/** The read of read.ts: matching events of a boundary in `direction` order from `from`, inclusive. */
export function selectEvents(db: Kysely<Database>, request: ReadRequest) {
  const direction = request.direction;
  let query = db
    .selectFrom("orisun_events")
    .select([
      "event_id",
      "event_type",
      // In the forms cheapest to decode (see read.ts): the tags as one JSON array of their
      // encodeTag() texts, which are JSON arrays themselves; JSON as the text it was stored as;
      // the date as epoch milliseconds (truncated, as a Date holds it).
      sql<string>`'[' || array_to_string(tags, ',') || ']'`.as("tags"),
      sql<string>`data::text`.as("data"),
      sql<string | null>`metadata::text`.as("metadata"),
      "commit_position",
      "prepare_position",
      sql<string>`${sql.raw(epochMillisSql("date_created"))}`.as("created_ms"),
    ])
    .where("boundary", "=", request.boundary)
    .where(querySql(request.query));
  if (request.from !== undefined) {
    query = query.where(positionSql(direction === "asc" ? ">=" : "<=", request.from));
  }
  if (request.until !== undefined) query = query.where(positionSql("<=", request.until));
  return query
    .orderBy("commit_position", direction)
    .orderBy("prepare_position", direction)
    .limit(request.count);
}
