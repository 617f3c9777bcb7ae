import { type RawBuilder, sql } from "kysely";
import { encodeTag } from "./schema.js";
import type { Criterion, Position, Query } from "./types.js";

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
