import { StoreError } from "./errors.js";
import type { EventStore, ReadOptions } from "./event-store.js";
import { readBytes } from "./query-sql.js";
import {
  comparePositions,
  type Position,
  positionAfter,
  type Query,
  type StoredEvent,
} from "./types.js";

/** One query of a decision: up to `count` matching events after `after`, ascending. */
export interface DecisionQuery {
  readonly query: Query;
  /** Exclusive. */
  readonly after: Position;
  readonly count: number;
}

export interface DecisionReadRequest {
  readonly boundary: string;
  readonly queries: readonly DecisionQuery[];
  /** Read the log as it was at this head (a later page of the same decision); undefined: now. */
  readonly at?: Position | undefined;
  /**
   * Bytes of events in the answer, all queries together; a query that finds the budget spent
   * still returns one event, so that its hasMore is exact. Undefined: counts alone bound it.
   */
  readonly maxBytes?: number | undefined;
}

export interface DecisionQueryResult {
  readonly events: StoredEvent[];
  /**
   * More matching events lie at or below the head, after the last one returned (also when the
   * answer's bytes cut the query short of its count).
   */
  readonly hasMore: boolean;
}

export interface DecisionRead {
  /** The snapshot every result was read from: the marker for the decision's append. */
  readonly head: Position;
  readonly results: DecisionQueryResult[];
}

const show = (p: Position) => `{commit_position: ${p.commit}, prepare_position: ${p.prepare}}`;

/**
 * Reads every query of a decision at one head. Each query is bounded by `position <= head`, which
 * makes them one snapshot however many statements they take (see EventStore.readAtHead for why a
 * bound equals a snapshot). Each reads one event more than asked, to tell whether there are more.
 */
export async function readForDecision(
  store: Pick<EventStore, "head" | "read">,
  request: DecisionReadRequest,
  options: ReadOptions = {},
): Promise<DecisionRead> {
  const current = await store.head(request.boundary, options.signal);
  if (request.at !== undefined && comparePositions(request.at, current) > 0) {
    throw new StoreError(
      "invalid",
      `must not be above the boundary's head ${show(current)} (set it to a head a decision read returned), got ${show(request.at)}`,
      "at",
    );
  }
  const head = request.at ?? current;
  const results: DecisionQueryResult[] = [];
  let budget = request.maxBytes;
  // One after the other: a decision has a few queries, and this holds one pooled connection at most.
  for (const { query, after, count } of request.queries) {
    const from = positionAfter(after);
    if (from === undefined || comparePositions(from, head) > 0) {
      results.push({ events: [], hasMore: false });
      continue;
    }
    const events = await store.read(
      {
        boundary: request.boundary,
        query,
        from,
        until: head,
        count: count + 1,
        direction: "asc",
        maxBytes: budget === undefined ? undefined : Math.max(1, budget),
      },
      options,
    );
    const hasMore = events.length > count || events.cut;
    const kept = events.length > count ? events.slice(0, count) : events;
    if (budget !== undefined) budget -= kept.reduce((sum, e) => sum + readBytes(e), 0);
    results.push({ events: kept, hasMore });
  }
  return { head, results };
}
