import { type RawBuilder, sql } from "kysely";
import { encodeTag, epochMillisSql } from "./schema.js";
import type { Criterion, Position, Query, ReadRequest, StoredEvent } from "./types.js";

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

/** A row of a read, in the forms cheapest to decode (see read.ts). */
export interface EventRow {
  readonly event_id: string;
  readonly event_type: string;
  /** One JSON array of the encodeTag() texts, which are JSON arrays themselves. */
  readonly tags: string;
  /** JSON as the text it was stored as. */
  readonly data: string;
  readonly metadata: string | null;
  readonly commit_position: string;
  readonly prepare_position: string;
  /** Epoch milliseconds (truncated, as a Date holds it). */
  readonly created_ms: string;
  /** With a request's maxBytes: the first row past it, there only to say that the page was cut. */
  readonly over?: boolean;
}

const COLUMNS = sql`event_id, event_type, '[' || array_to_string(tags, ',') || ']' AS tags,
  data::text AS data, metadata::text AS metadata, commit_position, prepare_position,
  ${sql.raw(epochMillisSql("date_created"))} AS created_ms`;

/** The read's bounds on position: from `from` (inclusive, in the read's direction) up to `until`. */
function rangeSql(request: ReadRequest): RawBuilder<boolean> {
  const bounds: RawBuilder<boolean>[] = [];
  if (request.from !== undefined) {
    bounds.push(positionSql(request.direction === "asc" ? ">=" : "<=", request.from));
  }
  if (request.until !== undefined) bounds.push(positionSql("<=", request.until));
  return bounds.length === 0 ? sql<boolean>`TRUE` : sql.join(bounds, sql` AND `);
}

const orderSql = (request: ReadRequest) => {
  const direction = sql.raw(request.direction === "asc" ? "ASC" : "DESC");
  return sql`commit_position ${direction}, prepare_position ${direction}`;
};

/** The read as the planner likes it: matching events of a boundary in order from `from`, inclusive. */
export function selectEvents(request: ReadRequest): RawBuilder<EventRow> {
  return capped(
    request,
    sql<EventRow>`SELECT ${COLUMNS} FROM orisun_events
    WHERE boundary = ${request.boundary} AND ${querySql(request.query)} AND ${rangeSql(request)}
    ORDER BY ${orderSql(request)} LIMIT ${request.count}`,
    COLUMN_NAMES,
  );
}

/**
 * What an event counts toward a read's maxBytes beyond its data, metadata, tags' text and type:
 * the rest of its protobuf encoding (id, positions, date, field keys and lengths) takes up to 88
 * bytes, so that a page within the bound is within it on the wire too.
 */
export const EVENT_OVERHEAD_BYTES = 96;

/** An event's size as `capped` counts it in SQL, for budgets kept in this process. */
export function readBytes(event: StoredEvent): number {
  return (
    Buffer.byteLength(event.data) +
    Buffer.byteLength(event.metadata) +
    Buffer.byteLength(`[${event.tags.map(encodeTag).join(",")}]`) +
    Buffer.byteLength(event.type) +
    EVENT_OVERHEAD_BYTES
  );
}

/**
 * `page`, a read in the request's order, cut before the row that would take it past
 * `request.maxBytes`, the first row always kept. Each row counts its text columns' bytes and
 * EVENT_OVERHEAD_BYTES. The row after the cut comes too, marked `over`, so that the reader knows
 * the page was cut (read.ts drops it). The rows are sized and cut inside PostgreSQL: a page of
 * ten thousand 1 MiB events never reaches this process whole. A row of nulls
 * (selectSparseEvents' verdict) counts 0.
 */
function capped<Row>(
  request: ReadRequest,
  page: RawBuilder<Row>,
  columns: readonly string[],
): RawBuilder<Row> {
  if (request.maxBytes === undefined) return page;
  const bound = request.maxBytes;
  return sql<Row>`SELECT ${sql.join(columns.map((c) => sql.ref(`capped.${c}`)))},
      capped.n > 1 AND capped.reach > ${bound} AS over
    FROM (
      SELECT sized.*, row_number() OVER running AS n, sum(sized.bytes) OVER running AS reach
      FROM (SELECT page.*, coalesce(octet_length(page.data) + coalesce(octet_length(page.metadata), 0)
          + octet_length(page.tags) + octet_length(page.event_type) + ${sql.lit(EVENT_OVERHEAD_BYTES)}, 0) AS bytes
        FROM (${page}) AS page) AS sized
      WINDOW running AS (ORDER BY ${orderSql(request)} ROWS UNBOUNDED PRECEDING)) AS capped
    WHERE capped.n <= 2 OR capped.reach - capped.bytes <= ${bound}
    ORDER BY ${orderSql(request)}`;
}

/** The columns of COLUMNS, by name. */
const COLUMN_NAMES = [
  "event_id",
  "event_type",
  "tags",
  "data",
  "metadata",
  "commit_position",
  "prepare_position",
  "created_ms",
] as const satisfies readonly (keyof EventRow)[];

/** Most events of a boundary that selectSparseEvents's probe may find for it to answer the query. */
export const SPARSE_MATCHES = 1_000;

/**
 * Whether a read tries selectSparseEvents first: every query but the two that an index serves in
 * position order whatever their size, all events (the primary key) and one criterion of one type
 * alone (the type index). Any other query the planner may misjudge: a tag it did not list, or
 * several types or criteria, whose estimates it adds up (100 criteria of 100 types nobody has
 * walked a 1M-event boundary in 1.6 s; README, "Many criteria").
 */
export const readsSparse = (query: Query): boolean => {
  const [only] = query;
  if (only === undefined) return false;
  return query.length > 1 || only.tags.length > 0 || only.types.length > 1;
};

/**
 * The probe's subquery for one criterion: the events carrying its tags (types aside), through the
 * GIN index; or for a criterion of types alone, the events of those types, through the type index.
 */
function probeSql(boundary: string, criterion: Criterion): RawBuilder<unknown> {
  const matching =
    criterion.tags.length > 0
      ? sql`tags @> ${criterion.tags.map(encodeTag)}::text[]`
      : sql`event_type = ANY(${[...criterion.types]}::text[])`;
  return sql`(SELECT ctid AS row_id FROM orisun_events
    WHERE boundary = ${boundary} AND ${matching} LIMIT ${SPARSE_MATCHES + 1})`;
}

/** A row of selectSparseEvents: an event, or the one row of nulls that carries the verdict. */
export type SparseRow = { readonly dense: boolean } & (
  | EventRow
  | { readonly [K in keyof EventRow]: null }
);

/**
 * The read of a tag query that has few matches in the boundary, in one statement.
 *
 * The probe lists the events that carry the tags of some criterion (types aside; the types of a
 * criterion without tags), at most SPARSE_MATCHES + 1 of them in any order, one subquery a
 * criterion (probeSql): PostgreSQL plans each alone for a LIMIT of a thousand, and so reads a
 * rare tag through the GIN index. With no more than SPARSE_MATCHES, they hold every match: the
 * page is picked from them by query, position and direction, and fetched by ctid. With more,
 * `dense` is true and no event is returned: read the query with selectEvents. There is always at
 * least one row (all nulls when no event is returned), which carries `dense`.
 *
 * Why: for a small page, the planner walks the primary key (or the type index) in position order
 * when it expects the matches to be frequent enough to meet the page early. A tag that ANALYZE
 * did not list among the common ones is estimated at up to 0.5% of the rows, so a page of 10 for
 * a tag on no event walked a 1M-event boundary: a quarter of a second, against 0.13 ms here
 * (README, "Reading a rare tag"). Types stay out of a tag's subquery: with them, PostgreSQL AND'ed
 * the GIN index with the type index, whose bitmap holds the whole type. One subquery a criterion,
 * because OR'ed in one scan the criteria's estimates add up: 100 tags nobody has looked like 39%
 * of the boundary, which PostgreSQL then scanned whole, 9 s at 1M events ("Many criteria"). UNION
 * ALL, so that the probe stops at its thousand-and-first row: an event that two criteria match
 * counts twice, which can only send a query to the planner's read a little early.
 */
export function selectSparseEvents(request: ReadRequest): RawBuilder<SparseRow> {
  const probes = request.query.map((c) => probeSql(request.boundary, c));
  return capped(
    request,
    sql<SparseRow>`WITH probe AS MATERIALIZED (
      SELECT row_id FROM (${sql.join(probes, sql` UNION ALL `)}) AS tagged
      LIMIT ${SPARSE_MATCHES + 1})
    SELECT verdict.dense, page.* FROM (SELECT count(*) > ${SPARSE_MATCHES} AS dense FROM probe) AS verdict
    LEFT JOIN LATERAL (
      SELECT ${COLUMNS} FROM orisun_events
      WHERE NOT verdict.dense AND ctid = ANY (ARRAY(SELECT row_id FROM probe))
        AND ${querySql(request.query)} AND ${rangeSql(request)}
      ORDER BY ${orderSql(request)} LIMIT ${request.count}) AS page ON TRUE
    ORDER BY ${orderSql(request)}`,
    ["dense", ...COLUMN_NAMES],
  );
}
