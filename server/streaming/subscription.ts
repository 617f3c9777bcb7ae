import type { FeedMember, LiveFeeds } from "../broker/feed.js";
import { quote, StoreError } from "../store/errors.js";
import type { EventStore } from "../store/event-store.js";
import { matches } from "../store/matcher.js";
import type { HeldLock } from "../store/session-locks.js";
import {
  comparePositions,
  type EventPage,
  eventPage,
  type Position,
  positionAfter,
  type Query,
  type StoredEvent,
} from "../store/types.js";

export interface SubscribeRequest {
  readonly boundary: string;
  readonly query: Query;
  /** Exclusive; events at this position or before are not sent. */
  readonly after: Position;
  /** Non-empty: exclusive in the boundary across every server process. */
  readonly subscriberName: string;
}

export interface SubscriptionLimits {
  /** Events per store read while catching up. */
  readonly pageSize: number;
  /** Bytes of events per catch-up read (ORISUN_MAX_READ_BYTES); undefined: pageSize alone. */
  readonly pageBytes?: number;
  /** Live events a subscriber may have waiting before it falls back to catching up. */
  readonly bufferEvents: number;
  /** Bytes of data+metadata likewise. */
  readonly bufferBytes: number;
}

export interface SubscriptionDeps {
  readonly store: EventStore;
  readonly feeds: LiveFeeds;
  readonly limits: SubscriptionLimits;
  /** This process's named subscriptions, held to their cap; none: not capped. */
  readonly named?: NamedSubscriptions;
  /** Metrics of open subscriptions (server/observability); none: nothing is measured. */
  readonly observer?: SubscriptionObserver;
}

/** Hears of each subscription opened, so that metrics can count them and tell their lag. */
export interface SubscriptionObserver {
  opened(boundary: string, after: Position): SubscriptionProbe;
}

export interface SubscriptionProbe {
  /** The subscription sent the event at `position`. */
  sent(position: Position): void;
  closed(): void;
}

/** Set by subscribe() to say where the event it yields comes from. */
export interface SubscriptionPhase {
  /** From the boundary's live feed: the same object goes to every subscriber it matches. */
  live: boolean;
}

/**
 * The events of a subscription in runs, in position order, until `signal` aborts: the history
 * from the store a page at a time, then from the boundary's live feed whatever its buffer holds
 * each time it looks (one event while it keeps up, more when it falls behind). Runs are never
 * empty; the next is asked for once the last one is sent. Joining the feed before reading the
 * history closes the handover race: an event is either already in the store when a page is read,
 * or it reaches the feed after the join. Events the history already sent are skipped by position.
 * A subscriber that cannot keep up leaves the feed when its buffer is full, catches up from the
 * store again and rejoins, so it neither slows the others nor grows memory without bound.
 */
export async function* subscribe(
  deps: SubscriptionDeps,
  request: SubscribeRequest,
  signal: AbortSignal,
  phase: SubscriptionPhase = { live: false },
): AsyncGenerator<readonly StoredEvent[]> {
  const slot = request.subscriberName ? deps.named?.take() : undefined;
  let lock: HeldLock | undefined;
  try {
    lock = request.subscriberName
      ? await deps.store.locks.tryAcquire(
          `orisun-subscriber:${request.boundary}:${request.subscriberName}`,
        )
      : undefined;
  } catch (error) {
    slot?.();
    throw error;
  }
  if (request.subscriberName && !lock) {
    slot?.();
    throw new StoreError(
      "already_exists",
      `${quote(request.subscriberName)} is already subscribed in boundary ${quote(request.boundary)}`,
      "subscriber_name",
    );
  }
  const abort = lock ? AbortSignal.any([signal, lock.lost]) : signal;
  let cursor = request.after;
  const probe = deps.observer?.opened(request.boundary, cursor);
  try {
    while (!abort.aborted) {
      const buffer = new LiveBuffer(deps.limits, abort);
      const leave = await deps.feeds.join(request.boundary, buffer);
      phase.live = false;
      try {
        // Catch-up reads take turns for their share of the connections (see EventStore.read):
        // a subscription waits as long as it must, until its own client gives up.
        const readAfter = async (after: Position): Promise<EventPage> => {
          const from = positionAfter(after);
          if (from === undefined) return eventPage([], false);
          return deps.store.read(
            {
              boundary: request.boundary,
              query: request.query,
              from,
              count: deps.limits.pageSize,
              direction: "asc",
              maxBytes: deps.limits.pageBytes,
            },
            { signal: abort, catchUp: true },
          );
        };
        let next: Promise<EventPage> | undefined = readAfter(cursor);
        while (next) {
          let page: EventPage;
          try {
            page = await next;
          } catch (error) {
            if (abort.aborted) return;
            throw error;
          }
          const last = page.at(-1);
          const more = (page.length === deps.limits.pageSize || page.cut) && last !== undefined;
          // The next page is read while this one is sent, but only when that takes nobody's
          // turn: so the pages held in memory stay bounded by the catch-up connections.
          next = more && deps.store.catchUpIdle ? readAfter(last.position) : undefined;
          // Observed by the await above; one abandoned on abort must not be an unhandled rejection.
          next?.catch(() => {});
          if (abort.aborted) return;
          if (last) {
            yield page;
            cursor = last.position;
            probe?.sent(cursor);
          }
          if (more) next ??= readAfter(cursor);
        }
        phase.live = true;
        for (;;) {
          const buffered = await buffer.next();
          if (buffered === undefined) break; // overflowed or aborted
          const after = cursor;
          const run = buffered.filter(
            (event) => comparePositions(event.position, after) > 0 && matches(event, request.query),
          );
          const last = run.at(-1);
          if (!last) continue;
          yield run;
          cursor = last.position;
          probe?.sent(cursor);
        }
      } finally {
        leave();
        buffer.dispose();
      }
    }
    if (lock?.lost.aborted && !signal.aborted) {
      throw new StoreError(
        "unavailable",
        "the subscriber name's lock was lost with the database session; resubscribe",
      );
    }
  } finally {
    probe?.closed();
    await lock?.release();
    slot?.();
  }
}

/**
 * The named subscriptions of this process, held to ORISUN_MAX_NAMED_SUBSCRIPTIONS. Each holds a
 * PostgreSQL session advisory lock, and the server's lock table, which every session of that
 * PostgreSQL shares, has max_locks_per_transaction × max_connections entries (6,400 by default):
 * past it, every session fails with "out of shared memory".
 */
export class NamedSubscriptions {
  private held = 0;

  constructor(readonly max: number) {}

  /** A place for one more, or StoreError "limit_reached"; call the result once it ends. */
  take(): () => void {
    if (this.held >= this.max) {
      throw new StoreError(
        "limit_reached",
        `this server process holds ORISUN_MAX_NAMED_SUBSCRIPTIONS (${this.max}) named subscriptions; subscribe without a name, or to another process`,
        "subscriber_name",
      );
    }
    this.held++;
    let given = false;
    return () => {
      if (given) return;
      given = true;
      this.held--;
    };
  }
}

/**
 * A subscriber's bounded queue of live events; once full it drops everything and says so. The
 * run it handed out last counts against the bounds until the next is asked for (it is being sent
 * until then), so a subscriber holds at most the limits in all.
 */
export class LiveBuffer implements FeedMember {
  private readonly events: StoredEvent[] = [];
  private bytes = 0;
  private sendingEvents = 0;
  private sendingBytes = 0;
  private overflowed = false;
  private wake: (() => void) | undefined;

  private readonly onAbort = () => this.wake?.();

  constructor(
    private readonly limits: SubscriptionLimits,
    private readonly abort: AbortSignal,
  ) {
    abort.addEventListener("abort", this.onAbort, { once: true });
  }

  /** A subscription may go through many buffers (one per fall-back); each lets go of the signal. */
  dispose(): void {
    this.abort.removeEventListener("abort", this.onAbort);
  }

  push(event: StoredEvent): void {
    if (this.overflowed) return;
    this.events.push(event);
    this.bytes += event.data.length + event.metadata.length;
    if (
      this.events.length + this.sendingEvents > this.limits.bufferEvents ||
      this.bytes + this.sendingBytes > this.limits.bufferBytes
    ) {
      this.overflowed = true;
      this.events.length = 0;
      this.bytes = 0;
    }
    this.wake?.();
  }

  /**
   * Every live event buffered (waiting for one); undefined when the buffer overflowed or the
   * subscription was aborted.
   */
  async next(): Promise<StoredEvent[] | undefined> {
    this.sendingEvents = 0;
    this.sendingBytes = 0;
    for (;;) {
      if (this.abort.aborted || this.overflowed) return undefined;
      if (this.events.length > 0) {
        this.sendingEvents = this.events.length;
        this.sendingBytes = this.bytes;
        this.bytes = 0;
        return this.events.splice(0);
      }
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
      this.wake = undefined;
    }
  }
}
