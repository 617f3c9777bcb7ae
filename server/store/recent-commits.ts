import { matches } from "./matcher.js";
import { comparePositions, type Position, type Query, type Tag } from "./types.js";

/** What a condition check needs of an event. */
export interface RecentEvent {
  readonly position: Position;
  readonly type: string;
  readonly tags: readonly Tag[];
}

export interface RecentCommitsLimits {
  /** Estimated bytes (see estimateBytes) that all boundaries' windows hold together at most. */
  readonly maxBytes: number;
  /** Events one boundary's window holds at most. */
  readonly maxEvents: number;
  /** A window unused this long is dropped (noticed when any boundary commits). */
  readonly idleMs: number;
}

interface Window {
  /** Exclusive: the boundary's head before the first event held. */
  from: Position;
  /** The boundary's head after the last event held. */
  head: Position;
  /** The events held are events[start..]; the slots before it were emptied (see trim). */
  events: (RecentEvent | undefined)[];
  start: number;
  /** estimateBytes of the window and its events. */
  bytes: number;
  /** When a commit or a check last used it (for idle expiry). */
  used: number;
}

/**
 * Heap bytes, measured on Node 20 (x64): an event with no tags (its object, position, two BigInts,
 * type string header, empty tags array, the window's slot) took 204; each tag's object, its slot
 * and the array's slack about 64; a string 16 plus its characters. Characters count 2 bytes (the
 * UTF-16 worst case), so this over-estimates ASCII text rather than under-estimate any.
 */
const EVENT_BYTES = 208;
const TAG_BYTES = 64;
const WINDOW_BYTES = 256;
const stringBytes = (s: string) => 16 + 2 * s.length;

/** Estimated heap bytes an event held in a window takes. */
export function estimateBytes(event: RecentEvent): number {
  let bytes = EVENT_BYTES + stringBytes(event.type);
  for (const tag of event.tags) bytes += TAG_BYTES + stringBytes(tag.key) + stringBytes(tag.value);
  return bytes;
}

/**
 * The latest events each boundary committed through this process, so that a condition whose
 * marker lies inside that stretch is checked in memory instead of by a query. The stretch is only
 * trusted when it ends exactly at the head the boundary's locked row reports: every commit, by any
 * process, advances that row, so equality proves that nothing was committed elsewhere since. Any
 * other head (another process appended, or an outcome this process could not see) drops it.
 *
 * All windows share one byte budget: past it, the least recently used boundaries' windows go
 * first, and a window alone over it loses its oldest events. Dropping only ever sends a check to
 * the database, so eviction costs speed, never correctness.
 */
export class RecentCommits {
  /** In order of last use, least recent first (a Map keeps insertion order). */
  private readonly windows = new Map<string, Window>();
  private total = 0;

  constructor(
    private readonly limits: RecentCommitsLimits,
    private readonly now: () => number = Date.now,
  ) {}

  /** Estimated bytes held, never above limits.maxBytes once a call returns. */
  get bytes(): number {
    return this.total;
  }

  /** Boundaries with a window (for tests and metrics). */
  get size(): number {
    return this.windows.size;
  }

  /** The head the boundary's window ends at: the head to expect if nobody else committed. */
  head(boundary: string): Position | undefined {
    return this.windows.get(boundary)?.head;
  }

  /**
   * Whether an event matching `query` lies after `after`, if this process holds every event of
   * the boundary after `after` up to `head` (the head read under the boundary's lock); undefined
   * when it does not and the database must answer.
   */
  violated(boundary: string, head: Position, after: Position, query: Query): boolean | undefined {
    const window = this.windows.get(boundary);
    if (!window) return undefined;
    if (comparePositions(window.head, head) !== 0) {
      this.forget(boundary);
      return undefined;
    }
    this.touch(boundary, window);
    if (comparePositions(after, window.from) < 0) return undefined;
    for (let i = window.events.length - 1; i >= window.start; i--) {
      const event = window.events[i] as RecentEvent;
      if (comparePositions(event.position, after) <= 0) return false;
      if (matches(event, query)) return true;
    }
    return false;
  }

  /** After a commit: `events` moved the boundary's head from `before` to `head`. */
  committed(boundary: string, before: Position, head: Position, events: readonly RecentEvent[]) {
    this.expireIdle();
    let window = this.windows.get(boundary);
    if (!window || comparePositions(window.head, before) !== 0) {
      this.forget(boundary);
      window = { from: before, head: before, events: [], start: 0, bytes: WINDOW_BYTES, used: 0 };
      this.total += window.bytes;
    }
    this.touch(boundary, window);
    for (const event of events) {
      window.events.push(event);
      const bytes = estimateBytes(event);
      window.bytes += bytes;
      this.total += bytes;
    }
    window.head = head;
    this.trim(window, window.events.length - window.start - this.limits.maxEvents);
    for (const [name, lru] of this.windows) {
      if (this.total <= this.limits.maxBytes) break;
      if (lru === window) break;
      this.forget(name);
    }
    // Only this window is left over the budget: it keeps what fits of its newest events.
    let excess = 0;
    let over = this.total - this.limits.maxBytes;
    while (over > 0 && window.start + excess < window.events.length) {
      over -= estimateBytes(window.events[window.start + excess] as RecentEvent);
      excess++;
    }
    this.trim(window, excess);
    if (this.total > this.limits.maxBytes) this.forget(boundary);
  }

  /** After a transaction whose outcome is unknown. */
  forget(boundary: string): void {
    const window = this.windows.get(boundary);
    if (!window) return;
    this.windows.delete(boundary);
    this.total -= window.bytes;
  }

  /** Marks the window most recently used. */
  private touch(boundary: string, window: Window): void {
    this.windows.delete(boundary);
    this.windows.set(boundary, window);
    window.used = this.now();
  }

  /**
   * Drops the window's `count` oldest events; it then answers only after the last dropped. Their
   * slots are emptied and removed from the array only once they are half of it: a full window
   * trims a few events per commit, and moving its 10,000 others each time showed in a profile of
   * 16 clients' appends (113 ms of 9.1 s busy).
   */
  private trim(window: Window, count: number): void {
    if (count <= 0) return;
    const end = window.start + count;
    window.from = (window.events[end - 1] as RecentEvent).position;
    for (let i = window.start; i < end; i++) {
      const bytes = estimateBytes(window.events[i] as RecentEvent);
      window.bytes -= bytes;
      this.total -= bytes;
      // The event is let go now; only its 8-byte slot waits for the splice.
      window.events[i] = undefined;
    }
    window.start = end;
    if (end * 2 >= window.events.length) {
      window.events.splice(0, end);
      window.start = 0;
    }
  }

  private expireIdle(): void {
    const cutoff = this.now() - this.limits.idleMs;
    for (const [name, window] of this.windows) {
      if (window.used > cutoff) break;
      this.forget(name);
    }
  }
}
