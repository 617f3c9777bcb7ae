import type { EventStore } from "../store/event-store.js";
import { type Position, START, type StoredEvent } from "../store/types.js";
import type { Following, LiveSource } from "./live-source.js";

export interface FeedOptions {
  readonly store: EventStore;
  /** Undefined: the embedded default, where the feed reads the store on each commit signal. */
  readonly source: LiveSource | undefined;
  readonly log: { warn(obj: object, msg: string): void };
  /** Events per store read when filling a gap. */
  readonly pageSize?: number;
  /** With a source: how long a commit signal may go unmatched by the source before the store is read. */
  readonly repairDelayMs?: number;
  /** With a source: how often the store is checked even without signals, in case one was lost. */
  readonly safetyPollMs?: number;
}

/** Where a feed delivers; `push` must not block (a subscriber buffers, or leaves when full). */
export interface FeedMember {
  push(event: StoredEvent): void;
}

/**
 * Each server process follows each boundary that has subscribers exactly once, here, and fans
 * the events out in memory: 100 subscribers on a boundary mean one JetStream consumer, not 100.
 */
export class LiveFeeds {
  private readonly feeds = new Map<string, BoundaryFeed>();

  constructor(private readonly options: FeedOptions) {}

  /**
   * Adds a member to the boundary's feed. Once this resolves, the member receives every event of
   * the boundary committed from then on, in position order, with no gap and no repeat; events
   * committed before may come too. Call the returned function to leave.
   */
  async join(boundary: string, member: FeedMember): Promise<() => void> {
    let feed = this.feeds.get(boundary);
    if (!feed) {
      feed = new BoundaryFeed(boundary, this.options, () => {
        if (this.feeds.get(boundary) === feed) this.feeds.delete(boundary);
      });
      this.feeds.set(boundary, feed);
    }
    return feed.add(member);
  }

  /** The last position the boundary's feed delivered (the head when it started), for metrics. */
  delivered(boundary: string): Position | undefined {
    return this.feeds.get(boundary)?.position;
  }

  /** Boundaries this process currently follows (for tests and metrics). */
  get following(): readonly string[] {
    return [...this.feeds.keys()];
  }

  async close(): Promise<void> {
    await Promise.all([...this.feeds.values()].map((f) => f.stop()));
    this.feeds.clear();
  }
}

class BoundaryFeed {
  private readonly members = new Set<FeedMember>();
  /** The last event delivered (or the head when the feed started): the next must follow it. */
  private last: Position = START;
  private readonly ready: Promise<void>;
  private following: Following | undefined;
  private stopped = false;
  /** Every change of `last` runs through this chain, so deliveries never interleave. */
  private chain: Promise<void> = Promise.resolve();
  private readingStore = false;
  private readAgain = false;
  private repairTimer: NodeJS.Timeout | undefined;
  private readonly pollTimer: NodeJS.Timeout | undefined;
  private readonly unsignal: () => void;
  private readonly unhandOver: () => void;

  constructor(
    private readonly boundary: string,
    private readonly options: FeedOptions,
    private readonly onEmpty: () => void,
  ) {
    // This process's own commits come with their events (see fromMemory); only others' are read.
    this.unhandOver = options.store.onCommit((b, _head, events) => {
      if (b === boundary) this.enqueue(() => this.fromMemory(events));
    });
    this.unsignal = options.store.signals.on((b, local) => {
      if (!local && (b === undefined || b === boundary)) this.signalled();
    });
    if (options.source) {
      this.pollTimer = setInterval(() => this.readStore(), options.safetyPollMs ?? 2_000);
      this.pollTimer.unref();
    }
    this.ready = this.start();
    // A failed start is reported to whoever joins; the feed itself is then dropped.
    this.ready.catch(() => void this.stop());
  }

  get position(): Position {
    return this.last;
  }

  private async start(): Promise<void> {
    // Follow first, then read the head: whatever commits after the head read is either
    // published to the source from then on, or read from the store as a gap.
    try {
      await this.follow();
    } catch (error) {
      // NATS is away: serve from the store on commit signals until following works again.
      this.followLater(error, "cannot follow the live source");
    }
    this.last = await this.options.store.head(this.boundary);
  }

  private async follow(): Promise<void> {
    const source = this.options.source;
    if (!source || this.stopped) return;
    this.following = await source.follow(
      this.boundary,
      (event) => this.enqueue(() => this.fromSource(event)),
      (error) => {
        this.following = undefined;
        this.followLater(error, "live source broke");
      },
    );
    if (this.stopped) await this.following.stop();
  }

  private async refollow(): Promise<void> {
    if (this.stopped || this.following) return;
    try {
      await this.follow();
      this.readStore();
    } catch (error) {
      this.followLater(error, "cannot follow the live source");
    }
  }

  private followLater(error: unknown, message: string): void {
    this.options.log.warn({ err: error, boundary: this.boundary }, message);
    setTimeout(() => void this.refollow(), 1_000).unref();
  }

  async add(member: FeedMember): Promise<() => void> {
    this.members.add(member);
    try {
      await this.ready;
    } catch (error) {
      this.members.delete(member);
      throw error;
    }
    return () => {
      this.members.delete(member);
      if (this.members.size === 0) void this.stop();
    };
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.onEmpty();
    this.unsignal();
    this.unhandOver();
    clearInterval(this.pollTimer);
    clearTimeout(this.repairTimer);
    await this.following?.stop().catch(() => {});
  }

  private enqueue(task: () => Promise<void> | void): void {
    this.chain = this.chain
      .then(() => this.ready)
      .then(task)
      .catch((error) => {
        this.options.log.warn({ err: error, boundary: this.boundary }, "live feed read failed");
        // Try again soon: the store may be restarting.
        setTimeout(() => this.readStore(), 1_000).unref();
      });
  }

  private signalled(): void {
    if (!this.options.source) {
      this.readStore();
      return;
    }
    // The source normally brings the event first; read the store only if it has not.
    this.repairTimer ??= setTimeout(() => {
      this.repairTimer = undefined;
      this.readStore();
    }, this.options.repairDelayMs ?? 250);
  }

  private async fromSource(event: StoredEvent): Promise<void> {
    const expected = this.last.prepare + 1n;
    if (event.position.prepare < expected) return; // already delivered
    // prepare_position grows by exactly one per event of the boundary: a jump is a gap.
    if (event.position.prepare > expected) await this.fillFromStore(event.position.prepare - 1n);
    if (event.position.prepare === this.last.prepare + 1n) this.deliver(event);
  }

  /**
   * A commit of this process, as its append handed it over: delivered at once when it follows
   * what was delivered. After a gap (another process committed in between) the source brings the
   * rest, or, without one, the store.
   */
  private fromMemory(events: readonly StoredEvent[]): void {
    const first = events[0];
    if (!first || this.stopped) return;
    if (first.position.prepare > this.last.prepare + 1n) {
      this.signalled();
      return;
    }
    for (const event of events) {
      if (event.position.prepare === this.last.prepare + 1n) this.deliver(event);
    }
  }

  /** Reads what the store has after `last` (coalescing signals while a read runs). */
  private readStore(): void {
    if (this.stopped) return;
    if (this.readingStore) {
      this.readAgain = true;
      return;
    }
    this.readingStore = true;
    this.enqueue(async () => {
      try {
        do {
          this.readAgain = false;
          await this.fillFromStore(undefined);
        } while (this.readAgain && !this.stopped);
      } finally {
        this.readingStore = false;
      }
    });
  }

  /** Delivers the store's events after `last`, up to prepare position `until` (or the end). */
  private async fillFromStore(until: bigint | undefined): Promise<void> {
    const pageSize = this.options.pageSize ?? 1_000;
    while (!this.stopped && (until === undefined || this.last.prepare < until)) {
      const page = await this.options.store.read({
        boundary: this.boundary,
        query: [],
        from: { commit: this.last.commit, prepare: this.last.prepare + 1n },
        count: pageSize,
        direction: "asc",
      });
      for (const event of page) {
        if (until !== undefined && event.position.prepare > until) return;
        this.deliver(event);
      }
      if (page.length < pageSize) return;
    }
  }

  private deliver(event: StoredEvent): void {
    this.last = event.position;
    for (const member of this.members) member.push(event);
  }
}
