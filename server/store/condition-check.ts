import { SPARSE_MATCHES } from "./query-sql.js";
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
 * there does it ask the indexes: a query whose every criterion names a tag through the events
 * that carry its tags, if no more than SPARSE_MATCHES do (SPARSE_CHECK_SQL), and otherwise, or for
 * a query with a criterion of types alone, the fenced query (FENCED_CHECK_SQL). Each statement
 * is planned with its values (EXECUTE).
 *
 * Why the walk: on a boundary new since the last ANALYZE, PostgreSQL estimates one row and read a
 * check through an index that holds the whole boundary (orisun_events_event_id_key, or the type
 * index with the marker only as a filter), every event of the boundary rather than the few after
 * the marker: 1–2 ms per check at 6,000 events (README, "All the cores"). With enable_sort off
 * the primary key, the only index in position order, is the only plan left.
 *
 * orisun_criteria(query): the query as SQL text for a WHERE clause, each value quoted by format().
 * orisun_tag_probe(query): the sparse check's probe for the query's tags, one subquery a criterion
 * (SPARSE_PROBE_SQL); NULL when a criterion names no tag.
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

/**
 * The events of the boundary ($1) that carry the tags of one criterion (%L: the tags), at most
 * SPARSE_MATCHES + 1: the sparse check's probe is the UNION ALL of one such subquery a criterion
 * (which stops at the thousand-and-first row; an event counted twice can only make it dense). Each
 * is planned alone, for a LIMIT of a thousand, so PostgreSQL reads a rare tag through the GIN
 * index and stops a common one after a thousand events (the same probe serves reads: query-sql.ts).
 * OR'ed in one scan under that LIMIT, the criteria's estimates add up: 100 tags nobody has looked
 * like 39% of the boundary, which PostgreSQL then scanned whole, 9 s at 1M events, inside the
 * append function, holding the boundary's lock (README, "Many criteria").
 */
export const SPARSE_PROBE_SQL =
  "(SELECT ctid AS row_id FROM orisun_events WHERE boundary = $1 AND tags @> %L::text[]" +
  ` LIMIT ${SPARSE_MATCHES + 1})`;

/**
 * A check on a marker further back, for a query whose every criterion names a tag: the probe (%s:
 * orisun_tag_probe) lists at most SPARSE_MATCHES + 1 events of the boundary that carry the tags of
 * some criterion; with no more than SPARSE_MATCHES, they hold every match, and the check is decided
 * among them by position and the whole query (%s: the criteria). Returns whether the probe found
 * more (`dense`: decide with FENCED_CHECK_SQL instead) and whether a match lies after the marker.
 *
 * Why: with the type in the fenced query, PostgreSQL estimated a rare tag at its 0.5% default and
 * AND'ed the GIN index with the type index, whose bitmap holds the type's every event after the
 * marker: 2.9 ms for a type and a tag of 5 events at 1M events (4.6 ms with two types), against
 * 0.1 ms for the tag alone (README, "Reading a rare tag").
 */
export const SPARSE_CHECK_SQL =
  "WITH probe AS MATERIALIZED (SELECT row_id FROM (%s) AS tagged" +
  ` LIMIT ${SPARSE_MATCHES + 1})` +
  ` SELECT (SELECT count(*) FROM probe) > ${SPARSE_MATCHES} AS dense, EXISTS (SELECT FROM orisun_events` +
  " WHERE ctid = ANY (ARRAY(SELECT row_id FROM probe))" +
  " AND (commit_position, prepare_position) > ($2, $3) AND (%s)) AS found";

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

export const TAG_PROBE_FUNCTION = `
CREATE OR REPLACE FUNCTION orisun_tag_probe(p_query json) RETURNS text
LANGUAGE sql STABLE AS $fn$
  SELECT CASE WHEN bool_and(json_array_length(c->'tags') > 0) THEN
      string_agg(format(${sqlString(SPARSE_PROBE_SQL)},
        ARRAY(SELECT json_array_elements_text(c->'tags'))), ' UNION ALL ')
    END
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
  v_probe text;
  v_dense boolean;
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
  -- Every criterion names a tag: the events that carry those tags, if they are few.
  v_probe := orisun_tag_probe(p_query);
  IF v_probe IS NOT NULL THEN
    EXECUTE format(${sqlString(SPARSE_CHECK_SQL)}, v_probe, v_where)
      INTO v_dense, v_found USING p_boundary, p_commit, p_prepare;
    IF NOT v_dense THEN
      RETURN v_found;
    END IF;
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
 * A statement of orisun_violated for `query`, the walk, the sparse check or the fenced check, as it
 * runs it ($1 the boundary, $2 and $3 the marker), built by the database's own functions: for
 * EXPLAIN, in the index tests and the bench.
 */
export async function checkSql(
  client: { query(text: string, values: unknown[]): Promise<{ rows: { sql: string }[] }> },
  query: Query,
  form: "fenced" | "walk" | "sparse" = "fenced",
): Promise<string> {
  const template = { fenced: FENCED_CHECK_SQL, walk: RECENT_CHECK_SQL, sparse: SPARSE_CHECK_SQL };
  const { rows } = await client.query(
    form === "sparse"
      ? "SELECT format($1::text, orisun_tag_probe($2::json), orisun_criteria($2::json)) AS sql"
      : "SELECT format($1::text, orisun_criteria($2::json)) AS sql",
    [template[form], JSON.stringify(queryJson(query))],
  );
  const text = rows[0]?.sql;
  if (text === undefined) throw new Error("orisun_criteria returned nothing");
  return text;
}
