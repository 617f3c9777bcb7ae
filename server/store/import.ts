import { type Kysely, sql } from "kysely";
import { notifyPayload } from "./commit-signals.js";
import { databaseError } from "./database-errors.js";
import { quote, StoreError } from "./errors.js";
import { type Database, encodeTag } from "./schema.js";
import type { EventToAppend, Position } from "./types.js";

export interface EventToImport extends EventToAppend {
  readonly position: Position;
  /** Seconds since the Unix epoch and microseconds within it (what timestamptz keeps). */
  readonly createdAt: { readonly seconds: bigint; readonly micros: number };
}

/**
 * Events to write exactly as given, for a restore. The API layer has checked each field and that
 * positions strictly increase (prepare strictly, commit never decreasing); what only the log can
 * tell, their place above the head, is checked here under the boundary's lock.
 */
export interface ImportRequest {
  readonly boundary: string;
  readonly events: readonly EventToImport[];
}

/**
 * Writes the events in one transaction under the boundary's row lock (the lock appends take, so
 * appends and imports serialise), advancing its head and event count and sending the commit
 * NOTIFY that wakes live subscribers and the JetStream publishers, as an append does. Resolves to
 * the new head. Nothing is written when any position is at or below the head, or any id is stored.
 */
export async function importEvents(
  db: Kysely<Database>,
  request: ImportRequest,
  instance: string,
): Promise<Position> {
  const { boundary, events } = request;
  const first = events[0];
  const last = events[events.length - 1];
  if (!first || !last) throw new StoreError("invalid", "must contain at least one event", "events");
  try {
    return await db.transaction().execute(async (trx) => {
      const lock = await sql<{ last_commit: string; last_prepare: string }>`
        INSERT INTO orisun_boundaries (name) VALUES (${boundary})
        ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
        RETURNING last_commit, last_prepare`.execute(trx);
      const row = lock.rows[0];
      if (!row) throw new StoreError("internal", "boundary row was not returned");
      const head = { commit: BigInt(row.last_commit), prepare: BigInt(row.last_prepare) };
      // A commit is written whole: continuing the head's commit would let a reader that saw its
      // end take it as complete, so the commit position itself must be new.
      if (first.position.commit <= head.commit || first.position.prepare <= head.prepare) {
        throw new StoreError(
          "failed_precondition",
          `events[0].position {${first.position.commit}, ${first.position.prepare}} must be above the head of ${quote(boundary)} {${head.commit}, ${head.prepare}} in both commit_position and prepare_position; nothing was written`,
          "events[0].position",
          {
            metadata: {
              boundary,
              head_commit_position: String(head.commit),
              head_prepare_position: String(head.prepare),
            },
          },
        );
      }
      const rows = events.map((e) => ({
        c: e.position.commit.toString(),
        p: e.position.prepare.toString(),
        id: e.id,
        type: e.type,
        tags: [...new Set(e.tags.map(encodeTag))],
        data: e.data,
        meta: e.metadata,
        s: e.createdAt.seconds.toString(),
        us: e.createdAt.micros,
      }));
      // One statement, as in append.ts: the events, the new head and count, and the NOTIFY
      // (delivered at commit). An id already stored is skipped by ON CONFLICT and counted
      // below, so the transaction rolls back with a clear error instead of a driver one.
      const written = await sql<{ n: number }>`
        WITH imported AS (
          INSERT INTO orisun_events (boundary, commit_position, prepare_position, event_id,
            event_type, tags, data, metadata, date_created)
          SELECT ${boundary}, x.c, x.p, x.id, x.type, x.tags, x.data::json,
            NULLIF(x.meta, '')::json,
            -- Exact: both parts are integers well inside float8's 53 bits.
            to_timestamp(x.s::float8) + x.us * interval '1 microsecond'
          FROM json_to_recordset(${JSON.stringify(rows)}::json)
            AS x(c int8, p int8, id text, type text, tags text[], data text, meta text,
              s int8, us int4)
          ON CONFLICT (boundary, event_id) DO NOTHING
          RETURNING 1
        ), counted AS (
          SELECT count(*)::int AS n FROM imported
        ), advanced AS (
          UPDATE orisun_boundaries
          SET last_commit = ${last.position.commit.toString()}::int8,
            last_prepare = ${last.position.prepare.toString()}::int8,
            event_count = event_count + (SELECT n FROM counted)
          WHERE name = ${boundary}
        )
        SELECT n, pg_notify('orisun_commits', ${notifyPayload(boundary, instance)})
        FROM counted`.execute(trx);
      if ((written.rows[0]?.n ?? 0) !== rows.length) {
        const taken = await sql<{ event_id: string }>`
          SELECT event_id FROM orisun_events
          WHERE boundary = ${boundary} AND event_id = ANY(${rows.map((r) => r.id)}::text[])
            AND (commit_position, prepare_position)
              <= (${head.commit.toString()}::int8, ${head.prepare.toString()}::int8)
          LIMIT 1`.execute(trx);
        throw new StoreError(
          "already_exists",
          `event id ${quote(taken.rows[0]?.event_id ?? "")} is already stored in ${quote(boundary)}; nothing was written`,
          "events.event_id",
        );
      }
      return last.position;
    });
  } catch (error) {
    throw databaseError(error);
  }
}
