import type { Kysely } from "kysely";
import type { DenseQueries } from "./dense-queries.js";
import { type EventRow, readsSparse, selectEvents, selectSparseEvents } from "./query-sql.js";
import type { Database } from "./schema.js";
import {
  type EventPage,
  eventPage,
  type Position,
  type ReadRequest,
  START,
  type StoredEvent,
} from "./types.js";

/**
 * Matching events of a boundary in `direction` order, starting at `from` inclusive. When `signal`
 * aborts, the read is dropped if it has not started; one in progress is cancelled on the server
 * when `cancel` (PostgreSQL: PGlite has no second session to cancel from), else left to finish.
 *
 * A query that no index serves in position order (readsSparse) is first read as a sparse one
 * (selectSparseEvents), unless `dense` knows it has too many matches for that; a probe that finds
 * too many records it there and the read goes to the planner.
 */
export async function readEvents(
  db: Kysely<Database>,
  request: ReadRequest,
  dense: DenseQueries,
  signal?: AbortSignal,
  cancel = false,
): Promise<EventPage> {
  const options = {
    signal,
    inflightQueryAbortStrategy: cancel ? ("cancel query" as const) : ("ignore query" as const),
  };
  if (readsSparse(request.query) && !dense.has(request.boundary, request.query)) {
    const { rows } = await selectSparseEvents(request).execute(db, options);
    if (!rows[0]?.dense) {
      return page(rows, (kept) =>
        kept.flatMap((row) => (row.event_id === null ? [] : [toEvent(request, row)])),
      );
    }
    dense.add(request.boundary, request.query);
  }
  const { rows } = await selectEvents(request).execute(db, options);
  return page(rows, (kept) => kept.map((row) => toEvent(request, row)));
}

/** The events of a read's rows; a last row marked `over` (query-sql's capped) says it was cut. */
function page<Row extends { readonly over?: boolean | null }>(
  rows: readonly Row[],
  toEvents: (rows: readonly Row[]) => StoredEvent[],
): EventPage {
  const cut = rows.at(-1)?.over === true;
  return eventPage(toEvents(cut ? rows.slice(0, -1) : rows), cut);
}

// One JSON.parse per row for its tags, where pg's array parser (a loop in JS over the escaped
// quotes) and a JSON.parse per tag cost more; a number for the date instead of pg's timestamp
// parser.
const toEvent = (request: ReadRequest, row: EventRow): StoredEvent => ({
  boundary: request.boundary,
  id: row.event_id,
  type: row.event_type,
  tags: (JSON.parse(row.tags) as [string, string][]).map(([key, value]) => ({ key, value })),
  data: row.data,
  metadata: row.metadata ?? "",
  position: { commit: BigInt(row.commit_position), prepare: BigInt(row.prepare_position) },
  createdAt: new Date(Number(row.created_ms)),
});

/** The position of the boundary's last event; START for a boundary with no events. */
export async function headPosition(
  db: Kysely<Database>,
  boundary: string,
  signal?: AbortSignal,
  cancel = false,
): Promise<Position> {
  const row = await db
    .selectFrom("orisun_boundaries")
    .select(["last_commit", "last_prepare"])
    .where("name", "=", boundary)
    .executeTakeFirst({
      signal,
      inflightQueryAbortStrategy: cancel ? "cancel query" : "ignore query",
    });
  return row ? { commit: BigInt(row.last_commit), prepare: BigInt(row.last_prepare) } : START;
}
