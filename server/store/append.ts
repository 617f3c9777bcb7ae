import {
  type Kysely,
  type PostgresPool,
  type PostgresPoolClient,
  sql,
  type Transaction,
} from "kysely";
import {
  callAppend,
  type FunctionCheck,
  type FunctionEvent,
  type FunctionOutcome,
} from "./append-function.js";
import type { AppendObserver, BatchOutcome } from "./append-observer.js";
import { notifyCommitted, notifyPayload } from "./commit-signals.js";
import { queryJson } from "./condition-check.js";
import { databaseError, isConnectionLost } from "./database-errors.js";
import { quote, StoreError } from "./errors.js";
import { matches } from "./matcher.js";
import { RecentCommits, type RecentCommitsLimits, type RecentEvent } from "./recent-commits.js";
import { type Database, encodeTag } from "./schema.js";
import {
  type AppendRequest,
  type Condition,
  comparePositions,
  type EventToAppend,
  type Position,
  START,
  type StoredEvent,
  type Tag,
} from "./types.js";

/** The pool the one-statement append takes its connections from (store/pg-pool.ts). */
export interface AppendConnections extends PostgresPool {
  /**
   * Whether anyone waits for one of its connections now. A boundary's drain keeps its connection
   * from one transaction to the next only while nobody does (Appender.drain); without this (the
   * embedded database's single session), it never keeps it.
   */
  contended?(): boolean;
}

/** From this many requests in a transaction on, the next one waits for as many (refillWait). */
const MANY_CALLERS = 5;

/**
 * How many requests the transaction after one of `last` requests, which took `lastMs`, waits for
 * (none: it starts at once), and for how long at most (`maxWaitMs` at most).
 *
 * Under a steady load from many callers, the answered ones come back a moment after their
 * transaction ends. Starting the next one at once sent the one or two that were quicker alone,
 * and the rest waited a whole transaction behind them, so that half the transactions carried a
 * single request. So:
 * - after one or two requests, the next transaction starts at once: a lone caller never waits;
 * - after three or four, it waits for half as many, at most as long as the last one took;
 * - after MANY_CALLERS or more, it waits for as many as the last one carried, at most twice as
 *   long as it took. A transaction's own cost (the server's work around the statement, the
 *   database's commit) is then shared by all of them instead of half: with the connection kept
 *   (drainWith), at 8 and 16 clients the server's CPU per append fell by about 16% and appends/s
 *   rose by 11–24%. With three or four callers the machine is not that busy, and waiting for
 *   all of them cost about 5% of the appends/s (README, design notes, "Waiting for the callers
 *   to come back").
 */
export function refillWait(
  last: number,
  lastMs: number,
  maxWaitMs: number,
): { need: number; ms: number } {
  if (last <= 2 || maxWaitMs <= 0) return { need: 0, ms: 0 };
  if (last < MANY_CALLERS) return { need: Math.ceil(last / 2), ms: Math.min(lastMs, maxWaitMs) };
  return { need: last, ms: Math.min(2 * lastMs, maxWaitMs) };
}

/** The connection a boundary's drain keeps between its transactions, if any. */
interface Lease {
  connection?: PostgresPoolClient;
}

export interface GroupCommitLimits {
  /** Most events one transaction takes (a single larger request still goes alone). */
  readonly maxEvents: number;
  /** Most data+metadata bytes one transaction takes (likewise). */
  readonly maxBytes: number;
  /**
   * Longest a transaction waits for more requests to join it (see Appender.drain); 0: never.
   * It also waits no longer than the boundary's previous transaction took (timers count whole
   * milliseconds, so at least 1 ms).
   */
  readonly maxWaitMs: number;
}

interface Pending {
  readonly request: AppendRequest;
  readonly bytes: number;
  readonly resolve: (position: Position) => void;
  readonly reject: (error: unknown) => void;
  /** The caller's deadline or cancel. */
  readonly signal: AbortSignal | undefined;
  /** Its transaction has begun to write it: from then on, aborting cannot take it back. */
  sent: boolean;
}

/** Dropped before anything was written. */
const notStarted = () =>
  new StoreError(
    "deadline_exceeded",
    "the request ended (its deadline passed or it was cancelled) before the append started; nothing was written",
  );

export const RETRY_SAME_IDS =
  "retry with the same event ids: if it was stored, the retry answers its position and stores nothing twice";

/** This process failed while the request was being appended (a bug): it may be stored. */
const faulted = () =>
  new StoreError(
    "internal",
    `the server failed while appending, so the append may or may not be stored; ${RETRY_SAME_IDS}`,
  );

/** Given up while its transaction was in flight: it may still commit. */
export const inFlight = () =>
  new StoreError(
    "deadline_exceeded",
    `the request ended (its deadline passed or it was cancelled) while the append was being written, so it may or may not be stored; ${RETRY_SAME_IDS}`,
  );

/** The COMMIT was sent and no answer came. */
const unknownOutcome = (cause: unknown) =>
  new StoreError(
    "unavailable",
    `the database did not confirm the commit, so the append may or may not be stored; ${RETRY_SAME_IDS}`,
    undefined,
    { cause },
  );

interface PositionedEvent extends EventToAppend {
  readonly position: Position;
}

interface Accepted {
  readonly ids: ReadonlySet<string>;
  readonly events: readonly PositionedEvent[];
  readonly last: Position;
}

type Outcome = { readonly ok: Position } | { readonly error: StoreError };

interface BatchResult {
  readonly outcomes: Outcome[];
  /** The boundary's head before this transaction, and after it when it appended anything. */
  readonly before: Position;
  readonly head: Position | undefined;
  readonly appended: RecentEvent[];
  /** The events written, as a read of the log returns them (for the live path). */
  readonly committed: StoredEvent[];
  /** UTF-8 bytes of the data and metadata written. */
  readonly bytes: number;
  /** Committed without NOTIFY (Appender.quiet). */
  readonly quiet?: boolean;
}

const conditionFailed = (boundary: string, condition: Condition) =>
  new StoreError(
    "condition_failed",
    `an event matching the condition exists after position {${condition.after.commit}, ${condition.after.prepare}}`,
    "consistency_condition",
    {
      metadata: {
        boundary,
        marker_commit_position: String(condition.after.commit),
        marker_prepare_position: String(condition.after.prepare),
      },
    },
  );

/**
 * unique_violation: the log already holds one of the event ids (orisun_events_event_id_key; the
 * primary key cannot clash, positions being handed out under the boundary's lock).
 */
const isDuplicateEventId = (error: unknown) =>
  (error as { code?: unknown } | null)?.code === "23505";

/**
 * Events per boundary kept for condition checks in memory (type, tags and position only). A
 * condition's marker is usually the position its client last read, a few commits back.
 */
const RECENT_EVENTS = 10_000;

/**
 * Notified after a transaction committed, with the boundary's new last position and the events it
 * wrote, exactly as the log now holds them (so the live path need not read them back).
 */
export type CommitListener = (
  boundary: string,
  head: Position,
  events: readonly StoredEvent[],
) => void;

/**
 * The write path. Appends to one boundary are serialised by a row lock on its orisun_boundaries
 * row, held until commit, so positions follow commit order across every process on the database.
 * To win the throughput back, requests that arrive while a boundary's transaction runs wait in
 * its queue and go together into the next one (group commit): each is checked in arrival order
 * against the database and against the requests accepted before it, and a failed check rejects
 * only its own request. An idle boundary commits a lone request at once: there is no timer.
 */
export class Appender {
  private readonly queues = new Map<string, Pending[]>();
  /** Drains waiting for their boundary's queue to refill, woken once it holds `need` requests. */
  private readonly refills = new Map<
    string,
    { readonly need: number; readonly wake: () => void }
  >();
  /** The windows of condition checks in memory (read for tests and metrics). */
  readonly recent: RecentCommits;
  /**
   * Whether this process's commits to a boundary may go without NOTIFY: true while this process
   * publishes the boundary to JetStream itself and that works (EventStore.commitQuietly). Its
   * commits then reach everyone through the stream, from what it hands over, and the NOTIFY would
   * wake nobody but this process with its own echo, and the processes standing by to take the
   * boundary over. The one-statement append asks at each call; the full transaction always
   * notifies.
   */
  quiet: (boundary: string) => boolean = () => false;
  /**
   * Told when the boundary's log may hold a commit that nobody was told of: a statement whose
   * answer was lost (the outcome is unknown, and a quiet commit sent no NOTIFY), or a fault of
   * this process after a commit (`fault`, the error), which dropped what waited behind it.
   * EventStore has its live readers and publisher read the log, and NOTIFYs other processes.
   */
  uncertain: (boundary: string, fault?: unknown) => void = () => {};

  /**
   * `connections` is the pool `db` runs on: the one-statement append takes a connection from it
   * directly, without the query builder, as the hottest path of the store. `instance` names this
   * process in its commit NOTIFYs, so it can ignore their echo.
   */
  constructor(
    private readonly db: Kysely<Database>,
    private readonly connections: AppendConnections,
    private readonly limits: GroupCommitLimits,
    private readonly onCommit: CommitListener,
    private readonly instance: string,
    recent: Omit<RecentCommitsLimits, "maxEvents">,
    private readonly observer?: AppendObserver,
  ) {
    this.recent = new RecentCommits({ maxEvents: RECENT_EVENTS, ...recent });
  }

  /**
   * When `signal` aborts, a request still waiting for its transaction is dropped; one whose
   * transaction already runs is answered at once but may still commit.
   */
  append(request: AppendRequest, signal?: AbortSignal): Promise<Position> {
    if (signal?.aborted) return Promise.reject(notStarted());
    return new Promise<Position>((resolve, reject) => {
      const bytes = request.events.reduce((n, e) => n + e.data.length + e.metadata.length, 0);
      const onAbort = () => {
        if (pending.sent) {
          reject(inFlight());
          return;
        }
        const queue = this.queues.get(request.boundary);
        const i = queue?.indexOf(pending) ?? -1;
        if (i >= 0) queue?.splice(i, 1);
        reject(notStarted());
      };
      const settled = () => signal?.removeEventListener("abort", onAbort);
      const pending: Pending = {
        request,
        bytes,
        resolve: (position) => {
          settled();
          resolve(position);
        },
        reject: (error) => {
          settled();
          reject(error);
        },
        signal,
        sent: false,
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      const queue = this.queues.get(request.boundary);
      if (queue) {
        queue.push(pending);
        const refill = this.refills.get(request.boundary);
        if (refill && queue.length >= refill.need) refill.wake();
        return;
      }
      this.queues.set(request.boundary, [pending]);
      this.drain(request.boundary).catch((error: unknown) =>
        this.drainFailed(request.boundary, error),
      );
    });
  }

  /**
   * Runs one transaction after another while the boundary has waiting requests, each after the
   * wait `refillWait` sets for it.
   */
  private async drain(boundary: string): Promise<void> {
    const lease: Lease = {};
    try {
      await this.drainWith(boundary, lease);
    } finally {
      lease.connection?.release();
    }
  }

  /**
   * drain's loop. While requests keep coming and nobody waits for a connection, it keeps the
   * connection of one transaction for the next (`lease`): the next statement is then sent as soon
   * as the last one's result is in, before the callers it answered are written back to. Handing
   * the connection back to pg's pool and taking it again costs a process.nextTick, which Node
   * runs only once every pending promise callback has run, the answers to those callers
   * included: at 16 clients about seven answers' worth of work stood between one transaction and
   * the next (README, design notes, "Keeping the connection between transactions").
   */
  private async drainWith(boundary: string, lease: Lease): Promise<void> {
    // The last transaction's requests (0 after a wait or a failure) and duration.
    let last = 0;
    let lastMs = 0;
    for (;;) {
      const queue = this.queues.get(boundary) ?? [];
      const { need, ms } = refillWait(last, lastMs, this.limits.maxWaitMs);
      if (queue.length < need) {
        // Kept through the wait (at most maxWaitMs) unless somebody waits for a connection now.
        if (this.connections.contended?.() !== false) {
          lease.connection?.release();
          lease.connection = undefined;
        }
        await this.refill(boundary, need, ms);
        last = 0;
        continue;
      }
      if (queue.length === 0) {
        this.queues.delete(boundary);
        return;
      }
      const batch = this.takeBatch(queue);
      const started = performance.now();
      let failure: StoreError | undefined;
      try {
        failure = await this.run(boundary, batch, lease);
      } catch (error) {
        // A fault of this process, maybe after the commit: callers not yet answered must not
        // wait forever, nor be told nothing was stored (drainFailed takes the rest of the queue).
        for (const pending of batch) pending.reject(faulted());
        throw error;
      }
      last = failure === undefined ? batch.length : 0;
      lastMs = performance.now() - started;
      if (failure === undefined) continue;
      if (batch.length > 1 && failure.kind === "internal") {
        // One request the database refused (beyond what validation catches) must not sink the
        // others: run each alone, so that only the culprit fails.
        for (const pending of batch) {
          const alone = await this.run(boundary, [pending], lease);
          if (alone) pending.reject(alone);
        }
      } else {
        for (const pending of batch) pending.reject(failure);
      }
      if (failure.kind === "unavailable") {
        // The database is out of reach: those waiting behind would each wait as long to learn it.
        for (const pending of queue.splice(0)) pending.reject(failure);
      }
    }
  }

  /**
   * A fault of this process (a listener that threw, say) ended the boundary's drain: what waits
   * is refused, so that no caller waits forever and the next append starts a drain of its own,
   * and the log is read again by whoever follows it, since the last commit may not have been
   * handed over.
   */
  private drainFailed(boundary: string, error: unknown): void {
    const waiting = this.queues.get(boundary) ?? [];
    this.queues.delete(boundary);
    this.refills.delete(boundary);
    this.recent.forget(boundary);
    const failure = new StoreError(
      "internal",
      "the server failed before this append was attempted, so nothing was stored; retry it",
    );
    for (const pending of waiting) pending.reject(failure);
    this.uncertain(boundary, error);
  }

  /** Resolves once the boundary's queue holds `need` requests, or after `ms` (at least 1 ms). */
  private refill(boundary: string, need: number, ms: number): Promise<void> {
    return new Promise((done) => {
      const wake = () => {
        clearTimeout(timer);
        this.refills.delete(boundary);
        done();
      };
      const timer = setTimeout(wake, Math.max(1, Math.round(ms)));
      this.refills.set(boundary, { need, wake });
    });
  }

  /** One transaction for the batch; settles every request unless it returns the failure. */
  private async run(
    boundary: string,
    batch: readonly Pending[],
    lease: Lease,
  ): Promise<StoreError | undefined> {
    // Set once the transaction wrote its events: its COMMIT is sent next.
    const written: { result?: BatchResult } = {};
    // The one-statement call first; the full transaction when it declines.
    let full = false;
    const attempt = async () => {
      // On a connection of its own first: a request is sent once the batch holds one, and a
      // caller that gave up while the pool had none for it was not sent (nothing is written).
      // The connection the last transaction kept, if any (see drainWith).
      const connection = lease.connection ?? (await this.connections.connect());
      lease.connection = undefined;
      let once: BatchResult | undefined;
      try {
        once = await this.commitAtOnce(connection, boundary, batch);
      } finally {
        // Kept only after a statement that succeeded: the full path below takes a connection of
        // its own from the pool, which may have no other.
        if (once && this.connections.contended?.() === false) lease.connection = connection;
        else connection.release();
      }
      if (once) return once;
      full = true;
      return this.db.transaction().execute(async (trx) => {
        written.result = await this.commitBatch(trx, boundary, batch);
        return written.result;
      });
    };
    let result: BatchResult;
    try {
      result = await (this.observer?.transaction(boundary, batch.length, attempt) ?? attempt());
    } catch (error) {
      // Committed or not, the held stretch can no longer be trusted to end at the head.
      this.recent.forget(boundary);
      const failure = databaseError(error);
      // The call is its own transaction: a lost connection leaves its outcome unknown.
      const unknown = full
        ? written.result?.head !== undefined && failure.kind === "unavailable"
        : isConnectionLost(error);
      if (!unknown) return failure;
      this.uncertain(boundary);
      return unknownOutcome(error);
    }
    if (result.head) this.recent.committed(boundary, result.before, result.head, result.appended);
    batch.forEach((pending, i) => {
      const outcome = result.outcomes[i];
      if (outcome && "ok" in outcome) pending.resolve(outcome.ok);
      else pending.reject(outcome?.error ?? new StoreError("internal", "no outcome"));
    });
    if (result.head) this.onCommit(boundary, result.head, result.committed);
    // Committed quietly, but this process no longer publishes the boundary (its lock was lost
    // meanwhile), so the commit was not handed over: whoever publishes it now must hear of it.
    if (result.quiet && !this.quiet(boundary))
      void notifyCommitted(this.db, boundary, this.instance);
    this.observer?.committed(boundary, batchOutcome(batch.length, result));
    return undefined;
  }

  private takeBatch(queue: Pending[]): Pending[] {
    let events = 0;
    let bytes = 0;
    let n = 0;
    for (const pending of queue) {
      events += pending.request.events.length;
      bytes += pending.bytes;
      if (n > 0 && (events > this.limits.maxEvents || bytes > this.limits.maxBytes)) break;
      n++;
    }
    return queue.splice(0, n);
  }

  /**
   * The batch in one round trip (orisun_append, see append-function.ts) when nothing calls for the
   * full transaction; undefined, having written nothing, when something does: a request this
   * process finds rejected (a condition violated in memory or by an earlier request of the batch,
   * an id repeated in the batch), or one the function finds so (a violated condition, a stored id,
   * a marker after the head). The full path then decides everything again under its lock, exactly
   * retries included.
   */
  private async commitAtOnce(
    connection: PostgresPoolClient,
    boundary: string,
    batch: readonly Pending[],
  ): Promise<BatchResult | undefined> {
    const dropped = this.markSent(batch);
    const expected = this.recent.head(boundary);
    let decidedAny = false;
    let marker: Position | undefined;
    const checks: FunctionCheck[] = [];
    const accepted: { request: AppendRequest; commits: bigint; prepares: bigint }[] = [];
    const ids = new Set<string>();
    const rows: FunctionEvent[] = [];
    let prepares = 0n;
    for (const [index, { request }] of batch.entries()) {
      if (dropped.has(index)) continue;
      for (const e of request.events) {
        if (ids.has(e.id)) return undefined;
        ids.add(e.id);
      }
      const condition = request.condition;
      if (condition) {
        const inMemory =
          expected && this.recent.violated(boundary, expected, condition.after, condition.query);
        if (inMemory === true) return undefined;
        decidedAny ||= inMemory === false;
        // The function answers 'stale' unless every marker is at or before the head, so every
        // event of the batch lies after every marker: an earlier request's match conflicts.
        const seenInBatch = accepted.some((a) =>
          a.request.events.some((e) => matches(e, condition.query)),
        );
        if (seenInBatch) return undefined;
        checks.push({
          after: condition.after,
          query: condition.query,
          decided: inMemory === false,
        });
        if (!marker || comparePositions(condition.after, marker) > 0) marker = condition.after;
      }
      const commits = BigInt(accepted.length + 1);
      for (const e of request.events) {
        prepares += 1n;
        rows.push({
          commits,
          prepares,
          id: e.id,
          type: e.type,
          tags: [...new Set(e.tags.map(encodeTag))],
          data: e.data,
          metadata: e.metadata,
        });
      }
      accepted.push({ request, commits, prepares });
    }
    if (accepted.length === 0) {
      // Every caller gave up before anything was sent: nothing to write, no round trip.
      const outcomes = batch.map(() => ({ error: notStarted() }));
      return {
        outcomes,
        before: expected ?? START,
        head: undefined,
        appended: [],
        committed: [],
        bytes: 0,
      };
    }
    const quiet = this.quiet(boundary);
    let called: FunctionOutcome;
    try {
      called = await callAppend(
        connection,
        boundary,
        decidedAny ? expected : undefined,
        marker,
        checks,
        rows,
        accepted.length,
        quiet ? undefined : this.instance,
      );
    } catch (error) {
      if (isDuplicateEventId(error)) return undefined;
      throw error;
    }
    const lone = accepted.length === 1 ? accepted[0]?.request : undefined;
    if (called.outcome === "failed" && lone?.condition) {
      // A lone request whose condition the function found violated, none of its ids stored (so
      // not a retry): the answer the full path would give, without its round trips.
      return {
        outcomes: batch.map((_, i) =>
          dropped.has(i)
            ? { error: notStarted() }
            : { error: conditionFailed(boundary, lone.condition as Condition) },
        ),
        before: expected ?? START,
        head: undefined,
        appended: [],
        committed: [],
        bytes: 0,
      };
    }
    if (called.outcome !== "ok") return undefined;
    const before = called.before;
    const at = (commits: bigint, prepares: bigint) => ({
      commit: before.commit + commits,
      prepare: before.prepare + prepares,
    });
    const outcomes: Outcome[] = [];
    let next = 0;
    for (const index of batch.keys()) {
      if (dropped.has(index)) outcomes.push({ error: notStarted() });
      else {
        const a = accepted[next++] as (typeof accepted)[number];
        outcomes.push({ ok: at(a.commits, a.prepares) });
      }
    }
    const appended: RecentEvent[] = [];
    const committed: StoredEvent[] = [];
    let bytes = 0;
    let r = 0;
    for (const a of accepted) {
      for (const e of a.request.events) {
        const row = rows[r++] as FunctionEvent;
        const position = at(row.commits, row.prepares);
        appended.push({ position, type: e.type, tags: e.tags });
        committed.push({
          boundary,
          id: e.id,
          type: e.type,
          tags: distinctTags(e.tags),
          data: e.data,
          metadata: e.metadata,
          position,
          createdAt: called.created,
        });
        bytes += Buffer.byteLength(e.data) + Buffer.byteLength(e.metadata);
      }
    }
    const last = accepted.at(-1) as (typeof accepted)[number];
    return {
      outcomes,
      before,
      head: at(last.commits, last.prepares),
      appended,
      committed,
      bytes,
      quiet,
    };
  }

  /**
   * Requests whose caller gave up while they waited for the connection are left out (their
   * indexes); the rest are written from here on, whatever their callers do.
   */
  private markSent(batch: readonly Pending[]): Set<number> {
    const dropped = new Set<number>();
    for (const [index, pending] of batch.entries()) {
      if (pending.signal?.aborted) dropped.add(index);
      else pending.sent = true;
    }
    return dropped;
  }

  private async commitBatch(
    trx: Transaction<Database>,
    boundary: string,
    batch: readonly Pending[],
  ): Promise<BatchResult> {
    const dropped = this.markSent(batch);
    // Creates the boundary on its first write and, either way, locks its row until commit.
    const lock = await sql<{ last_commit: string; last_prepare: string }>`
      INSERT INTO orisun_boundaries (name) VALUES (${boundary})
      ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
      RETURNING last_commit, last_prepare`.execute(trx);
    const row = lock.rows[0];
    if (!row) throw new StoreError("internal", "boundary row was not returned");
    let commit = BigInt(row.last_commit);
    let prepare = BigInt(row.last_prepare);
    const before = { commit, prepare };

    // Conditions whose marker lies within the stretch this process committed last are checked in
    // memory; the rest by the database, after the lock (below).
    const inMemory = new Map<number, boolean>();
    for (const [index, { request }] of batch.entries()) {
      const c = request.condition;
      const violated = c && this.recent.violated(boundary, before, c.after, c.query);
      if (violated !== undefined) inMemory.set(index, violated);
    }

    // After the lock, in a statement of its own: its snapshot then holds every commit before ours.
    // (Sharing the locking statement saves a round trip but needs a staleness check, and a lone
    // append measured slower so: 2.6 -> 3.2 ms p50.)
    const { stored, violated } = await lookUp(trx, boundary, batch, (i) => !inMemory.has(i));
    for (const [index, v] of inMemory) if (v) violated.add(index);
    const accepted: Accepted[] = [];
    const outcomes: Outcome[] = [];
    for (const [index, { request }] of batch.entries()) {
      if (dropped.has(index)) {
        outcomes.push({ error: notStarted() });
        continue;
      }
      const ids = request.events.map((e) => e.id);
      const retry = sameRequest(ids, stored, accepted);
      if (retry !== undefined) {
        outcomes.push(retry);
        continue;
      }
      const condition = request.condition;
      if (condition) {
        const seenInBatch = accepted.some((a) =>
          a.events.some(
            (e) => comparePositions(e.position, condition.after) > 0 && matches(e, condition.query),
          ),
        );
        if (seenInBatch || violated.has(index)) {
          outcomes.push({ error: conditionFailed(boundary, condition) });
          continue;
        }
      }
      commit += 1n;
      const events = request.events.map((e) => {
        prepare += 1n;
        return { ...e, position: { commit, prepare } };
      });
      const last = { commit, prepare };
      accepted.push({ ids: new Set(ids), events, last });
      outcomes.push({ ok: last });
    }

    if (accepted.length === 0) {
      return { outcomes, before, head: undefined, appended: [], committed: [], bytes: 0 };
    }
    const rows = accepted.flatMap((a) =>
      a.events.map((e) => ({
        c: e.position.commit.toString(),
        p: e.position.prepare.toString(),
        id: e.id,
        type: e.type,
        tags: [...new Set(e.tags.map(encodeTag))],
        data: e.data,
        meta: e.metadata,
      })),
    );
    // One statement, so one round trip: the events, the boundary's new head, and the NOTIFY
    // (delivered at commit) that wakes the live publishers of every process. The payload carries
    // the schema (the search_path of every pooled connection), so deployments sharing the
    // database do not wake each other. A data-modifying WITH runs once, read or not. now() is the
    // transaction's timestamp, which date_created defaults to: the live path hands it over.
    const written = await sql<{ created: Date }>`
      WITH appended AS (
        INSERT INTO orisun_events
          (boundary, commit_position, prepare_position, event_id, event_type, tags, data, metadata)
        SELECT ${boundary}, x.c, x.p, x.id, x.type, x.tags, x.data::json, NULLIF(x.meta, '')::json
        FROM json_to_recordset(${JSON.stringify(rows)}::json)
          AS x(c int8, p int8, id text, type text, tags text[], data text, meta text)
      ), advanced AS (
        UPDATE orisun_boundaries
        SET last_commit = ${commit.toString()}::int8, last_prepare = ${prepare.toString()}::int8,
          event_count = event_count + ${rows.length}
        WHERE name = ${boundary}
      )
      SELECT pg_notify('orisun_commits', ${notifyPayload(boundary, this.instance)}),
        now() AS created`.execute(trx);
    const createdAt = written.rows[0]?.created;
    if (!createdAt) throw new StoreError("internal", "the commit's timestamp was not returned");
    const appended = accepted.flatMap((a) =>
      a.events.map(({ position, type, tags }) => ({ position, type, tags })),
    );
    const bytes = rows.reduce(
      (n, r) => n + Buffer.byteLength(r.data) + Buffer.byteLength(r.meta),
      0,
    );
    return {
      outcomes,
      before,
      head: { commit, prepare },
      appended,
      committed: committedEvents(boundary, accepted, createdAt),
      bytes,
    };
  }
}

/**
 * The accepted events as a read of the log returns them: tags deduplicated in the order they were
 * stored, metadata "" for none, data as the text that was stored (json keeps its input text).
 */
function committedEvents(
  boundary: string,
  accepted: readonly Accepted[],
  createdAt: Date,
): StoredEvent[] {
  return accepted.flatMap((a) =>
    a.events.map((e) => ({
      boundary,
      id: e.id,
      type: e.type,
      tags: distinctTags(e.tags),
      data: e.data,
      metadata: e.metadata,
      position: e.position,
      createdAt,
    })),
  );
}

function distinctTags(tags: readonly Tag[]): Tag[] {
  if (tags.length < 2) return [...tags];
  const seen = new Set<string>();
  return tags.filter((t) => {
    const key = encodeTag(t);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

function batchOutcome(
  requests: number,
  result: { outcomes: readonly Outcome[]; appended: readonly unknown[]; bytes: number },
): BatchOutcome {
  let conditionFailures = 0;
  for (const o of result.outcomes) {
    if ("error" in o && o.error.kind === "condition_failed") conditionFailures++;
  }
  return { requests, events: result.appended.length, bytes: result.bytes, conditionFailures };
}

interface StoredCommits {
  /** event_id -> commit_position of the events already in the log. */
  readonly commitOf: ReadonlyMap<string, bigint>;
  /** commit_position -> number of events and last position, for the commits above. */
  readonly commits: ReadonlyMap<bigint, { size: number; last: Position }>;
}

/**
 * What the checks after the lock need, in one round trip (a lone append waits for each of its
 * round trips in turn): which of the batch's event ids the log holds already, and which
 * conditions an event after their marker violates, each checked by orisun_violated as the append
 * function checks them (condition-check.ts). Both read after the lock, as before.
 */
async function lookUp(
  trx: Transaction<Database>,
  boundary: string,
  batch: readonly Pending[],
  /** Which requests' conditions the database must check. */
  inDatabase: (index: number) => boolean,
): Promise<{ stored: StoredCommits; violated: Set<number> }> {
  const ids = batch.flatMap((p) => p.request.events.map((e) => e.id));
  const checks = batch.flatMap(({ request: { condition } }, i) =>
    condition && inDatabase(i)
      ? [
          {
            i,
            c: condition.after.commit.toString(),
            p: condition.after.prepare.toString(),
            q: queryJson(condition.query),
          },
        ]
      : [],
  );
  const violations =
    checks.length === 0
      ? sql``
      : sql`UNION ALL SELECT NULL, NULL, x.i
    FROM json_to_recordset(${JSON.stringify(checks)}::json) AS x(i int4, c int8, p int8, q json)
    WHERE orisun_violated(${boundary}, x.c, x.p, x.q)`;
  const { rows } = await sql<{
    event_id: string | null;
    commit_position: string | null;
    i: number | null;
  }>`
    SELECT event_id, commit_position, NULL::int4 AS i
    FROM orisun_events
    WHERE boundary = ${boundary} AND event_id = ANY(${ids}::text[])
    ${violations}`.execute(trx);
  const violated = new Set<number>();
  const found: { event_id: string; commit_position: string }[] = [];
  for (const row of rows) {
    if (row.i !== null) violated.add(row.i);
    else if (row.event_id !== null && row.commit_position !== null) {
      found.push({ event_id: row.event_id, commit_position: row.commit_position });
    }
  }
  return { stored: await storedCommits(trx, boundary, found), violated };
}

async function storedCommits(
  trx: Transaction<Database>,
  boundary: string,
  found: readonly { event_id: string; commit_position: string }[],
): Promise<StoredCommits> {
  const commitOf = new Map(found.map((r) => [r.event_id, BigInt(r.commit_position)]));
  const commits = new Map<bigint, { size: number; last: Position }>();
  if (found.length > 0) {
    const sizes = await trx
      .selectFrom("orisun_events")
      .select([
        "commit_position",
        sql<string>`count(*)::text`.as("size"),
        sql<string>`max(prepare_position)::text`.as("last"),
      ])
      .where("boundary", "=", boundary)
      .where(
        sql<boolean>`commit_position = ANY(${[...new Set(commitOf.values())].map(String)}::int8[])`,
      )
      .groupBy("commit_position")
      .execute();
    for (const s of sizes) {
      const c = BigInt(s.commit_position);
      commits.set(c, { size: Number(s.size), last: { commit: c, prepare: BigInt(s.last) } });
    }
  }
  return { commitOf, commits };
}

/**
 * An exact retry (every id stored by one earlier request, in the log or earlier in this batch)
 * answers that request's position; ids partly stored, or stored by other requests, are a conflict;
 * all-new ids give undefined.
 */
function sameRequest(
  ids: readonly string[],
  stored: StoredCommits,
  accepted: readonly Accepted[],
): Outcome | undefined {
  const inLog = ids.filter((id) => stored.commitOf.has(id));
  const inBatch = ids.filter((id) => accepted.some((a) => a.ids.has(id)));
  if (inLog.length === 0 && inBatch.length === 0) return undefined;
  if (inLog.length === ids.length) {
    const commits = new Set(inLog.map((id) => stored.commitOf.get(id)));
    const [only] = commits;
    const commit = only === undefined ? undefined : stored.commits.get(only);
    if (commits.size === 1 && commit && commit.size === ids.length) return { ok: commit.last };
  }
  if (inBatch.length === ids.length) {
    const earlier = accepted.find((a) => a.ids.has(ids[0] ?? ""));
    if (earlier && earlier.ids.size === ids.length && ids.every((id) => earlier.ids.has(id))) {
      return { ok: earlier.last };
    }
  }
  const taken = [...new Set([...inLog, ...inBatch])];
  return {
    error: new StoreError(
      "already_exists",
      `${taken.length} of ${ids.length} event ids are already stored by another request (first: ${quote(taken[0] ?? "")})`,
      "events.event_id",
    ),
  };
}
