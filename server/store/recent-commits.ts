import { matches } from "./matcher.js";
import { comparePositions, type Position, type Query, type Tag } from "./types.js";

/** What a condition check needs of an event. */
export interface RecentEvent {
  readonly position: Position;
  readonly type: string;
  readonly tags: readonly Tag[];
}

interface Window {
  /** Exclusive: the boundary's head before the first event held. */
  from: Position;
  /** The boundary's head after the last event held. */
  head: Position;
  events: RecentEvent[];
}

/**
 * The latest events each boundary committed through this process, so that a condition whose
 * marker lies inside that stretch is checked in memory instead of by a query. The stretch is only
 * trusted when it ends exactly at the head the boundary's locked row reports: every commit, by any
 * process, advances that row, so equality proves that nothing was committed elsewhere since. Any
 * other head (another process appended, or an outcome this process could not see) drops it.
 */
export class RecentCommits {
  private readonly windows = new Map<string, Window>();

  constructor(private readonly maxEvents: number) {}

  /**
   * Whether an event matching `query` lies after `after`, if this process holds every event of
   * the boundary after `after` up to `head` (the head read under the boundary's lock); undefined
   * when it does not and the database must answer.
   */
  violated(boundary: string, head: Position, after: Position, query: Query): boolean | undefined {
    const window = this.windows.get(boundary);
    if (!window) return undefined;
    if (comparePositions(window.head, head) !== 0) {
      this.windows.delete(boundary);
      return undefined;
    }
    if (comparePositions(after, window.from) < 0) return undefined;
    for (let i = window.events.length - 1; i >= 0; i--) {
      const event = window.events[i] as RecentEvent;
      if (comparePositions(event.position, after) <= 0) return false;
      if (matches(event, query)) return true;
    }
    return false;
  }

  /** After a commit: `events` moved the boundary's head from `before` to `head`. */
  committed(boundary: string, before: Position, head: Position, events: readonly RecentEvent[]) {
    let window = this.windows.get(boundary);
    if (!window || comparePositions(window.head, before) !== 0) {
      window = { from: before, head: before, events: [] };
      this.windows.set(boundary, window);
    }
    for (const event of events) window.events.push(event);
    window.head = head;
    const excess = window.events.length - this.maxEvents;
    if (excess > 0) {
      const dropped = window.events.splice(0, excess);
      window.from = (dropped.at(-1) as RecentEvent).position;
    }
  }

  /** After a transaction whose outcome is unknown. */
  forget(boundary: string): void {
    this.windows.delete(boundary);
  }
}
