import { type Kysely, sql } from "kysely";
import { arrayLiteral, element, textArray } from "./array-literal.js";
import type { BoundaryCap } from "./boundary-cap.js";
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
 * One message of an import: events of one boundary to write exactly as given, for a restore. The
 * API layer has checked each field and that positions strictly increase (prepare strictly, commit
 * never decreasing); what only the log can tell, their place above the head, is checked here.
 */
export interface ImportRequest {
  readonly boundary: string;
  readonly events: readonly EventToImport[];
}

export interface ImportResult {
  /** Events written, every message together. */
  readonly imported: number;
  /** Each boundary written, with its head after the import. */
  readonly heads: ReadonlyMap<string, Position>;
  /** The head of the last message's boundary; undefined when no message held events. */
  readonly last: Position | undefined;
}

/** What one import transaction knows of the boundaries it has written so far. */
interface Written {
  /** Each boundary's head as this transaction leaves it; set once its row is locked. */
  readonly heads: Map<string, Position>;
  /** Boundaries whose rows this transaction made: counted against the cap before the commit. */
  readonly created: string[];
  /** ORISUN_MAX_BOUNDARIES. */
  readonly maxBoundaries: number;
  imported: number;
}

/**
 * Writes a stream of messages in **one** transaction, so an import is all or nothing: a bad
 * message, a position at or below a head, an id already stored, the caller cancelling or its
 * deadline passing all roll back every message before it. `messages` throws to roll back: it is
 * the API layer's to tell a finished stream from an abandoned one. Each boundary's row is locked
 * at its first message (the lock appends take, so appends to it wait for the import), and each
 * message is one statement: its events, the new head and event count, and the commit NOTIFY that
 * wakes live subscribers and the JetStream publishers at the commit. One statement is in flight
 * while the next message is received and checked. Boundaries the import makes count against
 * ORISUN_MAX_BOUNDARIES, checked exactly just before the commit.
 */
export async function importEvents(
  db: Kysely<Database>,
  messages: AsyncIterable<ImportRequest>,
  instance: string,
  cap: BoundaryCap,
  signal?: AbortSignal,
): Promise<ImportResult> {
  try {
    return await db.transaction().execute(async (trx) => {
      const written: Written = {
        heads: new Map(),
        created: [],
        maxBoundaries: cap.max,
        imported: 0,
      };
      let last: Position | undefined;
      let writing: Promise<Position> | undefined;
      try {
        let index = 0;
        for await (const message of passedOn(messages)) {
          if (signal?.aborted) throw abandoned();
          if (writing) last = await writing;
          writing = write(trx, message, written, instance, `messages[${index++}]`);
          // Awaited on the next message or after the last; a failure meanwhile is not unhandled.
          writing.catch(() => {});
        }
        if (writing) last = await writing;
      } catch (error) {
        // The statement in flight settles before the rollback is sent on its connection.
        await writing?.catch(() => {});
        throw error;
      }
      if (signal?.aborted) throw abandoned();
      await cap.checkCreated(trx, written.created);
      return { imported: written.imported, heads: written.heads, last };
    });
  } catch (error) {
    throw isTheClients(error) ? error : databaseError(error);
  }
}

/** Errors of the request stream itself: the client's bytes, not the database, are at fault. */
const clientFaults = new WeakSet<object>();

function isTheClients(error: unknown): boolean {
  return typeof error === "object" && error !== null && clientFaults.has(error);
}

/**
 * The messages, with any error of the stream itself (its decoding, its size, its counts) marked
 * as the client's, so that it reaches the client with its own code rather than as a failure of the
 * database.
 */
async function* passedOn<T>(messages: AsyncIterable<T>): AsyncGenerator<T> {
  try {
    yield* messages;
  } catch (error) {
    if (typeof error === "object" && error !== null) clientFaults.add(error);
    throw error;
  }
}

/** One message: locks its boundary's row on its first message, then one statement. */
async function write(
  trx: Kysely<Database>,
  message: ImportRequest,
  written: Written,
  instance: string,
  at: string,
): Promise<Position> {
  const { boundary, events } = message;
  const first = events[0];
  const last = events[events.length - 1];
  if (!first || !last)
    throw new StoreError("invalid", "must contain at least one event", `${at}.events`);
  let head = written.heads.get(boundary);
  if (head === undefined) {
    const lock = await sql<{ last_commit: string; last_prepare: string; created: boolean }>`
      INSERT INTO orisun_boundaries (name) VALUES (${boundary})
      ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
      RETURNING last_commit, last_prepare, (xmax = 0) AS created`.execute(trx);
    const row = lock.rows[0];
    if (!row) throw new StoreError("internal", "boundary row was not returned");
    if (row.created) {
      written.created.push(boundary);
      // More new boundaries than the cap fail whatever exists: no need to hold them all first.
      if (written.created.length > written.maxBoundaries) {
        throw new StoreError(
          "limit_reached",
          `the import makes more than ORISUN_MAX_BOUNDARIES (${written.maxBoundaries}) new boundaries; nothing was written`,
          `${at}.boundary`,
        );
      }
    }
    head = { commit: BigInt(row.last_commit), prepare: BigInt(row.last_prepare) };
  }
  // A commit is written whole: continuing the head's commit would let a reader that saw its
  // end take it as complete, so the commit position itself must be new.
  if (first.position.commit <= head.commit || first.position.prepare <= head.prepare) {
    throw new StoreError(
      "failed_precondition",
      `{${first.position.commit}, ${first.position.prepare}} must be above the head of ${quote(boundary)} {${head.commit}, ${head.prepare}} in both commit_position and prepare_position; nothing was written`,
      `${at}.events[0].position`,
      {
        metadata: {
          boundary,
          head_commit_position: String(head.commit),
          head_prepare_position: String(head.prepare),
        },
      },
    );
  }
  // Columns as array literals for unnest. Measured on 100,000 events: PostgreSQL inserts them in
  // 0.78-0.88 s this way and in 1.19 s from json_to_recordset of the same rows (COPY: 0.67 s).
  // Written by array-literal.ts, at a third of the CPU of pg's own array serialiser.
  const n = events.length;
  const commits = new Array<bigint>(n);
  const prepares = new Array<bigint>(n);
  const ids = new Array<string>(n);
  const types = new Array<string>(n);
  const tags = new Array<string>(n);
  const data = new Array<string>(n);
  const metadata = new Array<string>(n);
  const seconds = new Array<bigint>(n);
  const micros = new Array<number>(n);
  for (let i = 0; i < n; i++) {
    const e = events[i] as EventToImport;
    commits[i] = e.position.commit;
    prepares[i] = e.position.prepare;
    ids[i] = element(e.id);
    types[i] = element(e.type);
    tags[i] = element(tagArray(e.tags));
    data[i] = element(e.data);
    metadata[i] = element(e.metadata);
    seconds[i] = e.createdAt.seconds;
    micros[i] = e.createdAt.micros;
  }
  // One statement, as in append.ts: the events, the new head and count, and the NOTIFY
  // (delivered at commit, once per boundary). An id already stored is skipped by ON CONFLICT and
  // counted below, so the transaction rolls back with a clear error instead of a driver one.
  const result = await sql<{ n: number }>`
    WITH imported AS (
      INSERT INTO orisun_events (boundary, commit_position, prepare_position, event_id,
        event_type, tags, data, metadata, date_created)
      SELECT ${boundary}, x.c, x.p, x.id, x.type, x.tags::text[], x.data::json,
        NULLIF(x.meta, '')::json,
        -- Exact: both parts are integers well inside float8's 53 bits.
        to_timestamp(x.s::float8) + x.us * interval '1 microsecond'
      FROM unnest(${arrayLiteral(commits)}::int8[], ${arrayLiteral(prepares)}::int8[],
        ${arrayLiteral(ids)}::text[], ${arrayLiteral(types)}::text[], ${arrayLiteral(tags)}::text[],
        ${arrayLiteral(data)}::text[], ${arrayLiteral(metadata)}::text[], ${arrayLiteral(seconds)}::int8[],
        ${arrayLiteral(micros)}::int4[]) AS x(c, p, id, type, tags, data, meta, s, us)
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
  if ((result.rows[0]?.n ?? 0) !== n) {
    const taken = await sql<{ event_id: string }>`
      SELECT event_id FROM orisun_events
      WHERE boundary = ${boundary} AND event_id = ANY(${arrayLiteral(ids)}::text[])
        AND (commit_position, prepare_position)
          <= (${head.commit.toString()}::int8, ${head.prepare.toString()}::int8)
      LIMIT 1`.execute(trx);
    throw new StoreError(
      "already_exists",
      `event id ${quote(taken.rows[0]?.event_id ?? "")} is already stored in ${quote(boundary)} (or earlier in this import); nothing was written`,
      `${at}.events.event_id`,
    );
  }
  written.heads.set(boundary, last.position);
  written.imported += n;
  return last.position;
}

/** An event's distinct tags as a text[] literal. */
function tagArray(list: EventToImport["tags"]): string {
  return textArray([...new Set(list.map(encodeTag))]);
}

function abandoned(): StoreError {
  return new StoreError(
    "deadline_exceeded",
    "the import ended (its deadline passed or it was cancelled) before it was committed; nothing was written",
  );
}
