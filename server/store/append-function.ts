import type { PostgresPoolClient } from "kysely";
import { notifyPayloadText } from "./commit-signals.js";
import { encodeTag } from "./schema.js";
import type { Position, Query } from "./types.js";

/**
 * orisun_append(), installed by migration 2026-12-02-append-function: the common append in one
 * statement, so one round trip where the transaction of append.ts takes five (BEGIN, lock, look-up,
 * insert, COMMIT). Called outside any transaction, it is its own: it locks (creating) the
 * boundary's row, checks the conditions the caller could not decide in memory, inserts the events
 * at positions after the head it locked, advances the head and event count, and notifies, all or
 * nothing. It writes nothing and answers
 * - 'stale' when a condition's marker lies after the head: the caller's in-batch checks assumed
 *   every new event lies after every marker;
 * - 'violated' when an event matching a condition exists after its marker and the log holds one
 *   of the batch's event ids: the caller takes the full path, which first looks for an exact
 *   retry (a conditional append retried after it was stored violates its own condition);
 * - 'failed' when a condition is violated and no event id is stored: a lone request has failed
 *   its condition, and a batch takes the full path, which rejects only the violating requests.
 * A duplicate event id raises unique_violation (23505), and the caller takes the full path too.
 *
 * Each statement of a volatile plpgsql function takes a new snapshot, so the checks after the
 * lock see every commit before it, as in append.ts. Checks marked `m` were decided in memory
 * against the head `expected`: they are skipped when the locked head is that head, and checked
 * here otherwise. Each check is planned with its values (EXECUTE), in the shape of
 * selectConditionViolation (its MATERIALIZED fence keeps PostgreSQL off a walk of the primary
 * key for a tag nobody has used).
 */
export const APPEND_FUNCTION = `
CREATE FUNCTION orisun_append(
  p_boundary text,
  p_expected_commit int8, p_expected_prepare int8,
  p_marker_commit int8, p_marker_prepare int8,
  p_checks json, p_events json, p_commits int8, p_payload text)
RETURNS TABLE (outcome text, before_commit int8, before_prepare int8, created timestamptz)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
  v_commit int8;
  v_prepare int8;
  v_fresh boolean;
  v_check json;
  v_where text;
  v_found boolean;
  v_count int8;
BEGIN
  INSERT INTO orisun_boundaries AS b (name) VALUES (p_boundary)
  ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
  RETURNING b.last_commit, b.last_prepare INTO v_commit, v_prepare;
  before_commit := v_commit;
  before_prepare := v_prepare;
  IF p_marker_commit IS NOT NULL
     AND (p_marker_commit, p_marker_prepare) > (v_commit, v_prepare) THEN
    outcome := 'stale';
    RETURN NEXT;
    RETURN;
  END IF;
  v_fresh := (v_commit, v_prepare) IS NOT DISTINCT FROM (p_expected_commit, p_expected_prepare);
  FOR v_check IN SELECT json_array_elements(p_checks) LOOP
    CONTINUE WHEN v_fresh AND (v_check->>'m')::boolean;
    SELECT coalesce(string_agg('(' || CASE
        WHEN json_array_length(c->'types') = 0 AND json_array_length(c->'tags') = 0 THEN 'TRUE'
        ELSE concat_ws(' AND ',
          CASE WHEN json_array_length(c->'types') > 0 THEN format('event_type = ANY(%L::text[])',
            ARRAY(SELECT json_array_elements_text(c->'types'))) END,
          CASE WHEN json_array_length(c->'tags') > 0 THEN format('tags @> %L::text[]',
            ARRAY(SELECT json_array_elements_text(c->'tags'))) END)
        END || ')', ' OR '), 'TRUE')
      INTO v_where
      FROM json_array_elements(v_check->'q') AS c;
    v_found := false;
    EXECUTE format('WITH matches AS MATERIALIZED (SELECT commit_position FROM orisun_events'
      ' WHERE boundary = $1 AND (commit_position, prepare_position) > ($2, $3) AND (%s))'
      ' SELECT true FROM matches LIMIT 1', v_where)
      INTO v_found
      USING p_boundary, (v_check->>'c')::int8, (v_check->>'p')::int8;
    IF v_found THEN
      outcome := CASE WHEN EXISTS (SELECT 1 FROM orisun_events WHERE boundary = p_boundary
          AND event_id IN (SELECT x.id FROM json_to_recordset(p_events) AS x(id text)))
        THEN 'violated' ELSE 'failed' END;
      RETURN NEXT;
      RETURN;
    END IF;
  END LOOP;
  INSERT INTO orisun_events
    (boundary, commit_position, prepare_position, event_id, event_type, tags, data, metadata)
  SELECT p_boundary, v_commit + x.dc, v_prepare + x.dp, x.id, x.type, x.tags, x.data::json,
    NULLIF(x.meta, '')::json
  FROM json_to_recordset(p_events) AS x(dc int8, dp int8, id text, type text, tags text[],
    data text, meta text);
  GET DIAGNOSTICS v_count = ROW_COUNT;
  UPDATE orisun_boundaries
  SET last_commit = v_commit + p_commits, last_prepare = v_prepare + v_count,
    event_count = event_count + v_count
  WHERE name = p_boundary;
  PERFORM pg_notify('orisun_commits', p_payload);
  outcome := 'ok';
  -- The transaction's timestamp, which date_created defaulted to: the live path hands it over.
  created := now();
  RETURN NEXT;
END
$fn$`;

/**
 * The start of the statement that calls it: pglite-pool.ts recognises it as the start of a
 * transaction, and pg-pool.ts prepares it once per connection. The commit timestamp comes back as
 * epoch milliseconds, the form reads give it in (query-sql.ts), so nothing parses a date.
 */
export const CALL_APPEND =
  "SELECT outcome, before_commit, before_prepare, (extract(epoch FROM date_trunc('milliseconds', created)) * 1000)::int8 AS created_ms FROM orisun_append(";

/** The whole statement: $1 the boundary, …, $9 the instance that the NOTIFY payload names. */
const APPEND_STATEMENT = `${CALL_APPEND}$1::text, $2::int8, $3::int8, $4::int8, $5::int8, $6::json, $7::json, $8::int8, ${notifyPayloadText("$1::text", "$9::text")})`;

/** A condition for orisun_append: `decided` when the caller checked it in memory. */
export interface FunctionCheck {
  readonly after: Position;
  readonly query: Query;
  readonly decided: boolean;
}

/** An event for orisun_append, at `commits`/`prepares` past the head it locks (from 1). */
export interface FunctionEvent {
  readonly commits: bigint;
  readonly prepares: bigint;
  readonly id: string;
  readonly type: string;
  readonly tags: readonly string[];
  readonly data: string;
  readonly metadata: string;
}

export type FunctionOutcome =
  | { readonly outcome: "ok"; readonly before: Position; readonly created: Date }
  | { readonly outcome: "stale" | "violated" | "failed" };

/** One call of orisun_append (see APPEND_FUNCTION), outside any transaction. */
export async function callAppend(
  /** A pooled connection of the store's pool, taken straight: no query builder on this path. */
  connection: PostgresPoolClient,
  boundary: string,
  /** The head the `decided` checks assumed; undefined when none was decided in memory. */
  expected: Position | undefined,
  /** The latest marker of the checks; undefined without checks. */
  marker: Position | undefined,
  checks: readonly FunctionCheck[],
  events: readonly FunctionEvent[],
  commits: number,
  /** Names the calling process in the commit's NOTIFY (see commit-signals.ts). */
  instance: string,
): Promise<FunctionOutcome> {
  const checksJson = JSON.stringify(
    checks.map((c) => ({
      m: c.decided,
      c: c.after.commit.toString(),
      p: c.after.prepare.toString(),
      q: c.query.map((k) => ({ types: k.types, tags: k.tags.map(encodeTag) })),
    })),
  );
  const eventsJson = JSON.stringify(
    events.map((e) => ({
      dc: e.commits.toString(),
      dp: e.prepares.toString(),
      id: e.id,
      type: e.type,
      tags: e.tags,
      data: e.data,
      meta: e.metadata,
    })),
  );
  const position = (p: Position | undefined, part: "commit" | "prepare") =>
    p === undefined ? null : p[part].toString();
  const { rows } = await connection.query<{
    outcome: "ok" | "stale" | "violated" | "failed";
    before_commit: string;
    before_prepare: string;
    created_ms: string | null;
  }>(APPEND_STATEMENT, [
    boundary,
    position(expected, "commit"),
    position(expected, "prepare"),
    position(marker, "commit"),
    position(marker, "prepare"),
    checksJson,
    eventsJson,
    commits,
    instance,
  ]);
  const row = rows[0];
  if (!row) throw new Error("orisun_append returned no row");
  if (row.outcome !== "ok") return { outcome: row.outcome };
  if (row.created_ms === null) throw new Error("orisun_append returned no commit timestamp");
  return {
    outcome: "ok",
    before: { commit: BigInt(row.before_commit), prepare: BigInt(row.before_prepare) },
    created: new Date(Number(row.created_ms)),
  };
}
