import { randomUUID } from "node:crypto";
import { Appender, type CommitListener, type GroupCommitLimits } from "./append.js";
import type { AppendObserver } from "./append-observer.js";
import { type BoundarySummary, listBoundaries } from "./boundaries.js";
import { BoundaryCap, DEFAULT_MAX_BOUNDARIES } from "./boundary-cap.js";
import { CommitSignals, notifyCommitted } from "./commit-signals.js";
import { type DatabaseOptions, type OpenDatabase, openDatabase } from "./database.js";
import { databaseError } from "./database-errors.js";
import { DenseQueries } from "./dense-queries.js";
import type { DiskSpaceGuard } from "./disk-space.js";
import { StoreError } from "./errors.js";
import { FairGate } from "./fair-gate.js";
import { type ImportRequest, type ImportResult, importEvents } from "./import.js";
import { headPosition, readEvents } from "./read.js";
import { SessionLocks } from "./session-locks.js";
import { Statistics, type StatisticsOptions } from "./statistics.js";
import type { AppendRequest, EventPage, EventToAppend, Position, ReadRequest } from "./types.js";

export interface EventStoreOptions extends DatabaseOptions {
  readonly groupCommit: GroupCommitLimits;
  /** Errors of the LISTEN connection (it reconnects by itself). */
  readonly onSignalError?: (error: Error) => void;
  /** When the store refreshes the planner's statistics itself (see statistics.ts). */
  readonly statistics?: StatisticsOptions;
  /** Errors of that background ANALYZE; the next append past the threshold retries. */
  readonly onStatisticsError?: (error: Error) => void;
  /** A fault of this process on a boundary's append path (a bug): logged, the boundary goes on. */
  readonly onAppendFault?: (boundary: string, error: unknown) => void;
  /** Most boundaries the deployment may have (ORISUN_MAX_BOUNDARIES). Default 10,000. */
  readonly maxBoundaries?: number;
  /** Estimated bytes the windows of condition checks in memory hold, all boundaries together. */
  readonly recentCommitsBytes?: number;
  /** After how long unused a boundary's window is dropped. */
  readonly boundaryIdleMs?: number;
  /** Connections catch-up reads may use at once; default half the pool. PGlite: always one. */
  readonly catchUpConnections?: number;
  /** Metrics and traces of the write path (server/observability); none: nothing is measured. */
  readonly observer?: AppendObserver;
}

export interface CallOptions {
  /** The caller's deadline or cancel: work not yet started is dropped, a read in progress cancelled. */
  readonly signal?: AbortSignal;
}

export interface ReadOptions extends CallOptions {
  /** A subscription catching up: waits its turn for the catch-up share of the connections. */
  readonly catchUp?: boolean;
}

/** Where an append goes: see EventStore.routeAppends. */
export type AppendRoute = (request: AppendRequest, options: CallOptions) => Promise<Position>;

const MiB = 1024 * 1024;

/** The store's whole surface: append with DCB conditions, read, and hear about commits. */
export class EventStore {
  private readonly listeners = new Set<CommitListener>();
  private readonly appender: Appender;
  private readonly statistics: Statistics;
  private readonly boundaries: BoundaryCap;
  /** Catch-up reads queue here, so that a storm of them leaves the rest of the pool to others. */
  private readonly catchUps: FairGate;
  /** Queries with too many matches for the sparse read (read.ts). */
  private readonly dense = new DenseQueries();
  /** Commits of every process, as hints for those who follow the log. */
  readonly signals: CommitSignals;
  /** Locks exclusive across every process on this database. */
  readonly locks: SessionLocks;
  /** Names this process in its commit NOTIFYs, so that it can ignore their echo. */
  private readonly instance = randomUUID();
  private route: AppendRoute | undefined;

  private constructor(
    readonly database: OpenDatabase,
    options: EventStoreOptions,
  ) {
    const instance = this.instance;
    this.signals = new CommitSignals(
      options.url,
      options.schema,
      instance,
      options.onSignalError ?? (() => {}),
    );
    this.locks = new SessionLocks(options.url, options.schema);
    this.catchUps = new FairGate(
      database.embedded
        ? 1
        : (options.catchUpConnections ?? Math.max(1, Math.floor(options.poolSize / 2))),
    );
    this.statistics = new Statistics(
      database.db,
      options.onStatisticsError ?? (() => {}),
      options.statistics,
    );
    this.boundaries = new BoundaryCap(
      database.db,
      options.schema,
      options.maxBoundaries ?? DEFAULT_MAX_BOUNDARIES,
    );
    this.appender = new Appender(
      database.db,
      database.connections,
      options.groupCommit,
      (boundary, head, events) => {
        for (const listener of this.listeners) listener(boundary, head, events);
        this.signals.emit(boundary, true);
      },
      instance,
      {
        maxBytes: options.recentCommitsBytes ?? 64 * MiB,
        idleMs: options.boundaryIdleMs ?? 5 * 60_000,
      },
      options.observer,
    );
    this.appender.uncertain = (boundary, fault) => {
      if (fault !== undefined) options.onAppendFault?.(boundary, fault);
      // As another process's commit: whoever follows the boundary here reads the log, and other
      // processes hear of it (a quiet commit sent no NOTIFY; the database may be out of reach, so
      // that is best effort, and their feeds' poll covers it).
      this.signals.emit(boundary, false);
      void this.announce(boundary);
    };
  }

  static async open(options: EventStoreOptions): Promise<EventStore> {
    return new EventStore(await openDatabase(options), options);
  }

  /** Estimated bytes held for condition checks in memory (for tests and metrics). */
  get recentCommitsBytes(): number {
    return this.appender.recent.bytes;
  }

  get embedded(): boolean {
    return this.database.embedded;
  }

  /** Appends atomically; resolves to the position of the last event written. */
  append(request: AppendRequest, options: CallOptions = {}): Promise<Position> {
    return this.route ? this.route(request, options) : this.appendHere(request, options);
  }

  /**
   * Sends appends through `route` (another worker may commit the boundary:
   * process/boundary-owners.ts), which commits the ones it keeps with appendHere. The returned
   * function appends here again.
   */
  routeAppends(route: AppendRoute): () => void {
    this.route = route;
    return () => {
      if (this.route === route) this.route = undefined;
    };
  }

  /** The append, in this process. */
  async appendHere(request: AppendRequest, options: CallOptions = {}): Promise<Position> {
    this.database.diskSpace?.admit(eventBytes(request.events));
    await this.boundaries.admit(request.boundary, options.signal);
    const position = await this.appender.append(request, options.signal);
    this.statistics.grew(request.events.length);
    return position;
  }

  /**
   * Writes a stream of messages at their given positions in one transaction (a restore): see
   * import.ts. Boundaries it makes count against ORISUN_MAX_BOUNDARIES like an append's, and live
   * readers are signalled as for a commit.
   */
  async import(
    messages: AsyncIterable<ImportRequest>,
    options: CallOptions = {},
  ): Promise<ImportResult> {
    const result = await importEvents(
      this.database.db,
      this.database.diskSpace ? guarded(messages, this.database.diskSpace) : messages,
      this.instance,
      this.boundaries,
      options.signal,
    );
    this.boundaries.remember(result.heads.keys());
    this.statistics.grew(result.imported);
    // Not handed over as this process's commit: live readers take it as another process's and
    // read the imported events from the log.
    for (const boundary of result.heads.keys()) this.signals.emit(boundary, false);
    return result;
  }

  /** Every boundary with its head and event count, by name, without scanning the log. */
  listBoundaries(): Promise<BoundarySummary[]> {
    return listBoundaries(this.database.db);
  }

  async read(request: ReadRequest, options: ReadOptions = {}): Promise<EventPage> {
    const { signal } = options;
    const release = options.catchUp ? await this.catchUps.acquire(signal) : undefined;
    try {
      return await readEvents(
        this.database.db,
        request,
        this.dense,
        signal,
        !this.database.embedded,
      );
    } catch (error) {
      if (signal?.aborted) throw readAbandoned(error);
      throw databaseError(error);
    } finally {
      release?.();
    }
  }

  /**
   * A read and the head of the snapshot it used. The head is read first, then the events bounded
   * by `position <= head`, in two statements: sound because an append moves the head in the
   * transaction that writes its events, under the boundary row lock held until commit, so every
   * event at or below a committed head was committed with or before it (visible to the second
   * statement), and any event committed after the first statement lies above the head (cut off).
   */
  async readAtHead(
    request: Omit<ReadRequest, "until">,
    options: ReadOptions = {},
  ): Promise<{ events: EventPage; head: Position }> {
    const head = await this.head(request.boundary, options.signal);
    const events = await this.read({ ...request, until: head }, options);
    return { events, head };
  }

  /** A catch-up read would start at once: reading ahead then takes nobody's turn. */
  get catchUpIdle(): boolean {
    return this.catchUps.idle;
  }

  /** With `signal`, given up (deadline_exceeded) when it aborts first, like a read. */
  async head(boundary: string, signal?: AbortSignal): Promise<Position> {
    try {
      return await headPosition(this.database.db, boundary, signal, !this.database.embedded);
    } catch (error) {
      if (signal?.aborted) throw readAbandoned(error);
      throw databaseError(error);
    }
  }

  /**
   * Called after each commit of this process, with what it wrote, in commit order per boundary;
   * other processes' commits arrive by NOTIFY orisun_commits (signals, without their events).
   */
  onCommit(listener: CommitListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * `publishes(boundary)` says this process publishes the boundary's commits to JetStream itself,
   * from what onCommit hands over, and that works: its commits to it then go without the NOTIFY
   * that other processes follow (see Appender.quiet). Set by the JetStream publisher; the returned
   * function puts NOTIFY back for every boundary. A commit made quietly while this process lost
   * the boundary's lock is notified at once; the publisher calls `announce` when it finds the
   * lock lost or its publishing failing, for those it did not see go.
   */
  commitQuietly(publishes: (boundary: string) => boolean): () => void {
    this.appender.quiet = publishes;
    return () => {
      if (this.appender.quiet === publishes) this.appender.quiet = () => false;
    };
  }

  /** NOTIFYs other processes of commits to the boundary (see commitQuietly). */
  announce(boundary: string): Promise<void> {
    return notifyCommitted(this.database.db, boundary, this.instance);
  }

  async close(): Promise<void> {
    await Promise.all([this.signals.close(), this.locks.close(), this.statistics.close()]);
    this.database.diskSpace?.close();
    await this.database.db.destroy();
  }
}

/** About the bytes the events take in the log (their data and metadata; tags are bounded small). */
function eventBytes(events: readonly EventToAppend[]): number {
  let bytes = 0;
  for (const e of events) bytes += e.data.length + e.metadata.length;
  return bytes;
}

/** An import's messages, each refused before it is written while the disk is nearly full. */
async function* guarded(
  messages: AsyncIterable<ImportRequest>,
  diskSpace: DiskSpaceGuard,
): AsyncIterable<ImportRequest> {
  for await (const message of messages) {
    diskSpace.admit(eventBytes(message.events));
    yield message;
  }
}

function readAbandoned(cause: unknown): StoreError {
  return new StoreError(
    "deadline_exceeded",
    "the request ended (its deadline passed or it was cancelled) before its read finished",
    undefined,
    { cause },
  );
}
