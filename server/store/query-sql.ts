import { type Kysely, type RawBuilder, sql } from "kysely";
import { type Database, encodeTag, epochMillisSql } from "./schema.js";
import type { Condition, Criterion, Position, Query, ReadRequest } from "./types.js";

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

/**
 * The DCB condition check of append.ts: one row if an event matching the query lies after the
 * marker. The matches are fenced in a MATERIALIZED CTE so that PostgreSQL plans them as if it had
 * to find all of them; planned for LIMIT 1, it walks the primary key hoping to meet a match early,
 * which for the common case of a tag nobody has used yet (a new entity, a free username) reads the
 * whole boundary (measured at 1M events: 175 ms as a walk, 3 ms through the GIN index). Execution
 * still stops at the first row.
 */
export function selectConditionViolation(
  db: Kysely<Database>,
  boundary: string,
  condition: Condition,
  /** Returned as column `i` when violated, so that several checks can share one statement. */
  index = 0,
) {
  return db
    .with(
      (cte) => cte("matches").materialized(),
      (q) =>
        q
          .selectFrom("orisun_events")
          .select("commit_position")
          .where("boundary", "=", boundary)
          .where(positionSql(">", condition.after))
          .where(querySql(condition.query)),
    )
    .selectFrom("matches")
    .select(sql<number>`${sql.lit(index)}::int4`.as("i"))
    .limit(1);
}

/**
 * The condition checks of a whole group-commit batch in one round trip (each check is an
 * independent subquery; in-batch conflicts are checked in memory): the indexes of the violated.
 */
export async function violatedConditions(
  db: Kysely<Database>,
  boundary: string,
  conditions: readonly (Condition | undefined)[],
): Promise<Set<number>> {
  const checks = conditions.flatMap((condition, i) =>
    condition ? [selectConditionViolation(db, boundary, condition, i)] : [],
  );
  const violated = new Set<number>();
  // Chunks keep each statement well below PostgreSQL's 65,535 bind parameters.
  for (let start = 0; start < checks.length; start += 200) {
    const chunk = checks.slice(start, start + 200).map((check) => sql`(${check})`);
    const { rows } = await sql<{ i: number }>`${sql.join(chunk, sql` UNION ALL `)}`.execute(db);
    for (const row of rows) violated.add(row.i);
  }
  return violated;
}
