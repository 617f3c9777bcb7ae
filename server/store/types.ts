/** A point in a boundary's log, ordered by (commit, prepare). {0,0} is before the first event. */
export interface Position {
  readonly commit: bigint;
  readonly prepare: bigint;
}

export const START: Position = { commit: 0n, prepare: 0n };

/** Both halves are PostgreSQL int8: the API's uint64 positions above this are refused. */
export const MAX_POSITION_PART = 9_223_372_036_854_775_807n;

/**
 * The smallest position after `p`, or undefined when nothing can follow it: after
 * {c, 2^63-1} comes {c+1, 0}, and after {2^63-1, 2^63-1} nothing ever.
 */
export function positionAfter(p: Position): Position | undefined {
  if (p.prepare < MAX_POSITION_PART) return { commit: p.commit, prepare: p.prepare + 1n };
  if (p.commit < MAX_POSITION_PART) return { commit: p.commit + 1n, prepare: 0n };
  return undefined;
}

export interface Tag {
  readonly key: string;
  readonly value: string;
}

/** Matches an event whose type is one of `types` (or `types` is empty) and that has every tag. */
export interface Criterion {
  readonly types: readonly string[];
  readonly tags: readonly Tag[];
}

/** Matches an event when any criterion does; no criteria matches every event. */
export type Query = readonly Criterion[];

export interface Condition {
  readonly after: Position;
  readonly query: Query;
}

export interface EventToAppend {
  readonly id: string;
  readonly type: string;
  readonly tags: readonly Tag[];
  /** JSON text, already validated. */
  readonly data: string;
  /** JSON text or "" for none. */
  readonly metadata: string;
}

export interface AppendRequest {
  readonly boundary: string;
  readonly events: readonly EventToAppend[];
  readonly condition?: Condition | undefined;
}

export interface StoredEvent {
  readonly boundary: string;
  readonly id: string;
  readonly type: string;
  readonly tags: readonly Tag[];
  readonly data: string;
  readonly metadata: string;
  readonly position: Position;
  readonly createdAt: Date;
}

export type Direction = "asc" | "desc";

export interface ReadRequest {
  readonly boundary: string;
  readonly query: Query;
  /** Inclusive. Undefined: the first event (asc) or the last (desc). */
  readonly from?: Position | undefined;
  readonly count: number;
  readonly direction: Direction;
  /** Inclusive upper bound whatever the direction: a head, so the read shows the log as of it. */
  readonly until?: Position | undefined;
  /**
   * The page stops once its events reach this many bytes (data, metadata, tags, type and 64 for
   * the rest), keeping at least one event: what a client's read may make the server hold.
   * Undefined: `count` alone bounds it.
   */
  readonly maxBytes?: number | undefined;
}

/**
 * A read's events. `cut`: the page stopped at the request's maxBytes with matching events left
 * within `count`, so fewer than `count` events does not mean that none follow.
 */
export type EventPage = StoredEvent[] & { readonly cut: boolean };

/** `events` as an EventPage; `cut` is not enumerable, so the page compares and prints as an array. */
export function eventPage(events: StoredEvent[], cut: boolean): EventPage {
  return Object.defineProperty(events, "cut", { value: cut, enumerable: false }) as EventPage;
}

export function comparePositions(a: Position, b: Position): number {
  if (a.commit !== b.commit) return a.commit < b.commit ? -1 : 1;
  if (a.prepare !== b.prepare) return a.prepare < b.prepare ? -1 : 1;
  return 0;
}
