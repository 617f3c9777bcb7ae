import { encodeTag } from "./schema.js";
import type { Query } from "./types.js";

/**
 * The DCB condition check, installed by the migrations as two SQL functions that every write path
 * calls: orisun_append_rows (append-function.ts) for the conditions it could not decide in memory,
 * and the full transaction (append.ts), after its lock.
 *
 * orisun_violated(boundary, commit, prepare, query): whether an event matching `query` (as
 * queryJson gives it) lies after the marker (commit, prepare). It first walks the events after the
 * marker on the primary key, in position order, with enable_sort off for that one statement: at
 * most RECENT_CHECK_EVENTS + 1 rows (RECENT_CHECK_SQL). Only when more than RECENT_CHECK_EVENTS lie
 * there does it ask the indexes (FENCED_CHECK_SQL). Each statement is planned with its values
 * (EXECUTE).
 *
 * Why the walk: on a boundary new since the last ANALYZE, PostgreSQL estimates one row and read a
 * check through an index that holds the whole boundary (orisun_events_event_id_key, or the type
 * index with the marker only as a filter), every event of the boundary rather than the few after
 * the marker: 1–2 ms per check at 6,000 events (README, "All the cores"). With enable_sort off
 * the primary key, the only index in position order, is the only plan left.
 *
 * orisun_criteria(query): the query as SQL text for a WHERE clause, each value quoted by format().
 */

/** Most events after a marker that a check walks before it asks the indexes instead. */
export const RECENT_CHECK_EVENTS = 1_000;

/**
 * The walk: whether an event after the marker matches (%s: the criteria, by format()) and how
 * many it read. $1 the boundary, $2 and $3 the marker.
 */
export const RECENT_CHECK_SQL =
  "SELECT coalesce(bool_or(%s), false), count(*) FROM (SELECT event_type, tags" +
  " FROM orisun_events WHERE boundary = $1 AND (commit_position, prepare_position) > ($2, $3)" +
  ` ORDER BY commit_position, prepare_position LIMIT ${RECENT_CHECK_EVENTS + 1}) AS recent`;

/**
 * A check on a marker further back. The matches are fenced in a MATERIALIZED CTE so that
 * PostgreSQL plans them as if it had to find all of them; planned for LIMIT 1, it walks the
 * primary key hoping to meet a match early, which for the common case of a tag nobody has used
 * yet (a new entity, a free username) reads the whole boundary (measured at 1M events: 175 ms as
 * a walk, 3 ms through the GIN index). Execution still stops at the first row.
 */
export const FENCED_CHECK_SQL =
  "WITH matches AS MATERIALIZED (SELECT commit_position FROM orisun_events" +
  " WHERE boundary = $1 AND (commit_position, prepare_position) > ($2, $3) AND (%s))" +
  " SELECT true FROM matches LIMIT 1";

/** A SQL string literal. */
const sqlString = (text: string) => `'${text.replaceAll("'", "''")}'`;

/** The SQL twin of matcher.ts and query-sql.ts's querySql, for the JSON of queryJson. */
export const CRITERIA_FUNCTION = `
CREATE OR REPLACE FUNCTION orisun_criteria(p_query json) RETURNS text
LANGUAGE sql STABLE AS $fn$
  SELECT coalesce(string_agg('(' || CASE
      WHEN json_array_length(c->'types') = 0 AND json_array_length(c->'tags') = 0 THEN 'TRUE'
      ELSE concat_ws(' AND ',
        CASE WHEN json_array_length(c->'types') > 0 THEN format('event_type = ANY(%L::text[])',
          ARRAY(SELECT json_array_elements_text(c->'types'))) END,
        CASE WHEN json_array_length(c->'tags') > 0 THEN format('tags @> %L::text[]',
          ARRAY(SELECT json_array_elements_text(c->'tags'))) END)
      END || ')', ' OR '), 'TRUE')
  FROM json_array_elements(p_query) AS c
$fn$`;

export const VIOLATED_FUNCTION = `
CREATE OR REPLACE FUNCTION orisun_violated(
  p_boundary text, p_commit int8, p_prepare int8, p_query json)
RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
  v_where text := orisun_criteria(p_query);
  v_sort text := current_setting('enable_sort');
  v_found boolean;
  v_seen int8;
BEGIN
  -- The events after the marker first, on the primary key (the only sort-free plan).
  PERFORM set_config('enable_sort', 'off', true);
  EXECUTE format(${sqlString(RECENT_CHECK_SQL)}, v_where)
    INTO v_found, v_seen USING p_boundary, p_commit, p_prepare;
  PERFORM set_config('enable_sort', v_sort, true);
  IF v_found OR v_seen <= ${RECENT_CHECK_EVENTS} THEN
    RETURN v_found;
  END IF;
  EXECUTE format(${sqlString(FENCED_CHECK_SQL)}, v_where)
    INTO v_found USING p_boundary, p_commit, p_prepare;
  RETURN coalesce(v_found, false);
END
$fn$`;

/** A query as orisun_criteria and orisun_violated take it: tags encoded as the column holds them. */
export function queryJson(query: Query): { types: readonly string[]; tags: string[] }[] {
  return query.map((c) => ({ types: c.types, tags: c.tags.map(encodeTag) }));
}

/**
 * A statement of orisun_violated for `query`, the walk or the fenced check, as it runs it ($1 the
 * boundary, $2 and $3 the marker), built by the database's own orisun_criteria: for EXPLAIN, in
 * the index tests and the bench.
 */
export async function checkSql(
  client: { query(text: string, values: unknown[]): Promise<{ rows: { sql: string }[] }> },
  query: Query,
  form: "fenced" | "walk" = "fenced",
): Promise<string> {
  const { rows } = await client.query("SELECT format($1::text, orisun_criteria($2::json)) AS sql", [
    form === "fenced" ? FENCED_CHECK_SQL : RECENT_CHECK_SQL,
    JSON.stringify(queryJson(query)),
  ]);
  const text = rows[0]?.sql;
  if (text === undefined) throw new Error("orisun_criteria returned nothing");
  return text;
}
