import type { PostgresPoolClient } from "kysely";
import { arrayLiteral, element, textArray } from "./array-literal.js";
import { notifyPayloadText } from "./commit-signals.js";
import { queryJson } from "./condition-check.js";
import { epochMillisSql } from "./schema.js";
import type { Position, Query } from "./types.js";

/**
 * orisun_append_rows() (migration 2026-12-03-append-rows; its first version, orisun_append(), came
 * with 2026-12-02-append-function and differs only in taking the events as JSON): the common
 * append in one statement, so one round trip where the transaction of append.ts takes five
 * (BEGIN, lock, look-up, insert, COMMIT). Called outside any transaction, it is its own: it locks
 * (creating) the boundary's row, checks the conditions the caller could not decide in memory,
 * inserts the events at positions after the head it locked, advances the head and event count,
 * and notifies (unless the payload is NULL), all or nothing. It writes nothing and answers
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
 * here otherwise, by orisun_violated (condition-check.ts), as the full transaction checks them.
 *
 * The function's SQL, for each way of passing the events (the two versions below).
 */
function appendFunction(
  /** The function's name and its parameters for the events. */
  name: string,
  events: string,
  /** A condition on event_id: one of the batch's ids. */
  anyId: string,
  /** The batch's rows: dc, dp, id, type, tags (text[]), data, meta. */
  rows: string,
): string {
  return `
CREATE OR REPLACE FUNCTION ${name}(
  p_boundary text,
  p_expected_commit int8, p_expected_prepare int8,
  p_marker_commit int8, p_marker_prepare int8,
  p_checks json, ${events}, p_commits int8, p_payload text)
RETURNS TABLE (outcome text, before_commit int8, before_prepare int8, created timestamptz)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
  v_commit int8;
  v_prepare int8;
  v_fresh boolean;
  v_check json;
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
    IF orisun_violated(p_boundary, (v_check->>'c')::int8, (v_check->>'p')::int8, v_check->'q')
    THEN
      outcome := CASE WHEN EXISTS (SELECT 1 FROM orisun_events WHERE boundary = p_boundary
          AND ${anyId})
        THEN 'violated' ELSE 'failed' END;
      RETURN NEXT;
      RETURN;
    END IF;
  END LOOP;
  INSERT INTO orisun_events
    (boundary, commit_position, prepare_position, event_id, event_type, tags, data, metadata)
  SELECT p_boundary, v_commit + x.dc, v_prepare + x.dp, x.id, x.type, x.tags, x.data::json,
    NULLIF(x.meta, '')::json
  FROM ${rows};
  GET DIAGNOSTICS v_count = ROW_COUNT;
  UPDATE orisun_boundaries
  SET last_commit = v_commit + p_commits, last_prepare = v_prepare + v_count,
    event_count = event_count + v_count
  WHERE name = p_boundary;
  -- No payload: the caller publishes this boundary to JetStream itself, so no other process
  -- needs to hear of the commit (append.ts, quiet commits).
  IF p_payload IS NOT NULL THEN
    PERFORM pg_notify('orisun_commits', p_payload);
  END IF;
  outcome := 'ok';
  -- The transaction's timestamp, which date_created defaulted to: the live path hands it over.
  created := now();
  RETURN NEXT;
END
$fn$`;
}

/** The first version: the events as one JSON array (kept for processes of earlier builds). */
export const APPEND_FUNCTION = appendFunction(
  "orisun_append",
  "p_events json",
  "event_id IN (SELECT x.id FROM json_to_recordset(p_events) AS x(id text))",
  `json_to_recordset(p_events) AS x(dc int8, dp int8, id text, type text, tags text[],
    data text, meta text)`,
);

/**
 * The events as one array per column, installed by migration 2026-12-03-append-rows and called by
 * this build. PostgreSQL reads array literals faster than it decodes one JSON document of the
 * same rows: a 1,600-event batch took a median 22.5 ms through orisun_append (psql, 8 calls) and
 * 14 ms as an INSERT from unnest of arrays (as orisun import does).
 */
export const APPEND_ROWS_FUNCTION = appendFunction(
  "orisun_append_rows",
  "p_dc int8[], p_dp int8[], p_ids text[], p_types text[], p_tags text[], p_data text[], p_meta text[]",
  "event_id = ANY(p_ids)",
  `(SELECT dc, dp, id, type, tags::text[] AS tags, data, meta
    FROM unnest(p_dc, p_dp, p_ids, p_types, p_tags, p_data, p_meta)
      AS u(dc, dp, id, type, tags, data, meta)) AS x`,
);

/**
 * The start of the statement that calls it: pglite-pool.ts recognises it as the start of a
 * transaction, and pg-pool.ts prepares it once per connection. The commit timestamp comes back as
 * epoch milliseconds, the form reads give it in (query-sql.ts), so nothing parses a date.
 */
export const CALL_APPEND = `SELECT outcome, before_commit, before_prepare, ${epochMillisSql("created")} AS created_ms FROM orisun_append_rows(`;

/**
 * The whole statement: $1 the boundary, $2-$5 the expected head and the marker, $6 the checks,
 * $7-$13 the events' columns, $14 the commits, $15 the instance that the NOTIFY payload names (NULL
 * makes the payload NULL: no NOTIFY).
 */
const APPEND_STATEMENT = `${CALL_APPEND}$1::text, $2::int8, $3::int8, $4::int8, $5::int8, $6::json, $7::int8[], $8::int8[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::int8, ${notifyPayloadText("$1::text", "$15::text")})`;

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
  /**
   * Names the calling process in the commit's NOTIFY (see commit-signals.ts); undefined: no NOTIFY
   * (the payload is NULL).
   */
  instance: string | undefined,
): Promise<FunctionOutcome> {
  const checksJson = JSON.stringify(
    checks.map((c) => ({
      m: c.decided,
      c: c.after.commit.toString(),
      p: c.after.prepare.toString(),
      q: queryJson(c.query),
    })),
  );
  const column = <T>(f: (e: FunctionEvent) => T) => arrayLiteral(events.map(f));
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
    column((e) => e.commits),
    column((e) => e.prepares),
    column((e) => element(e.id)),
    column((e) => element(e.type)),
    column((e) => element(textArray(e.tags))),
    column((e) => element(e.data)),
    column((e) => element(e.metadata)),
    commits,
    instance ?? null,
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
