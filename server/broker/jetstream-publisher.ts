import { type JetStreamManager, jetstreamManager, type PubAck } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { sql } from "kysely";
import { abortable } from "../abortable.js";
import type { EventStore } from "../store/event-store.js";
import type { HeldLock } from "../store/session-locks.js";
import type { Position, StoredEvent } from "../store/types.js";
import { HandedOver } from "./handed-over.js";
import {
  type BrokerLog,
  decodeEvents,
  encodeEvents,
  ensureStream,
  type LiveStreamLimits,
  streamNames,
  wireText,
} from "./jetstream.js";
import { type MessageAuth, MSG_ID_HEADER } from "./message-auth.js";
import { pause, Waker } from "./waker.js";

export interface JetStreamPublisherOptions {
  readonly store: EventStore;
  readonly nc: NatsConnection;
  /** Must match the sources' (the app passes its deployment id). */
  readonly namespace: string;
  /** Signs each message, so that sources can tell it from one anybody else published. */
  readonly auth: MessageAuth;
  readonly log: BrokerLog;
  /** How often a process that does not hold a boundary's publisher lock tries to take it. */
  readonly lockRetryMs?: number;
  /**
   * Boundaries another process is meant to publish (it commits their appends, so it publishes
   * from memory): this one tries their lock only after `lockRetryMs`, as a stand-by, so that the
   * first commit's NOTIFY does not start a race the committing process may lose; and holding one
   * (taken while that process was away), it lets it go once it has published all there is.
   */
  readonly defer?: ((boundary: string) => boolean) | undefined;
  /** After how long without a commit a boundary is let go: its lock, loop and timers end. */
  readonly idleMs?: number;
  /** How often boundaries nobody publishes are checked for commits not yet published. */
  readonly sweepMs?: number;
  /**
   * Estimated bytes of this process's own commits held for publishing from memory, all boundaries
   * together; beyond it, commits are read back from the store.
   */
  readonly handOverBytes?: number;
  /** Metrics of how far each boundary is published (server/observability). */
  readonly observer?: PublisherObserver;
  /**
   * How long publishes may go without JetStream confirming them: a message published this long
   * after the last confirmation asks for an ack, and a boundary that goes quiet this long with
   * messages unconfirmed reads the stream to confirm them.
   */
  readonly confirmMs?: number;
  /**
   * The least time between two messages of one boundary: commits that come sooner wait for the
   * rest of it and go out together in one message. 0 publishes every commit at once. A lone
   * client's appends each cost a message (signed, written to NATS's socket, stored) without it;
   * a commit after a quiet spell goes out at once either way.
   */
  readonly lingerMs?: number;
  /** The boundary streams' bounds; the source's must match. */
  readonly streamLimits?: LiveStreamLimits;
}

/** How the publisher came by what it published (for tests and metrics). */
export interface PublisherCounts {
  /** Reads of the store for events to publish: start-up, other processes' commits, repairs. */
  readBacks: number;
  /** Events published from what this process's appends handed over. */
  fromMemory: number;
  /** Messages published, and of those, how many asked for JetStream's ack. */
  messages: number;
  acked: number;
  /** Reads of a quiet boundary's stream that confirmed the messages not acknowledged. */
  confirmations: number;
}

/** Hears how far the boundaries this process publishes are in their streams. */
export interface PublisherObserver {
  /** The stream holds the boundary's events through `position`. */
  published(boundary: string, position: Position): void;
  /** This process no longer publishes the boundary. */
  released(boundary: string): void;
}

/** How a holder stopped publishing: idle (with how far the stream carries the boundary), or not. */
type PublishEnd = { readonly idle: Position } | "yielded" | "stopped";

/**
 * Where the stream ends: the position of its last event, the stream sequence of its last message
 * and that message's id (when it has one). When messages were published since JetStream last
 * confirmed one (by an ack, or by confirm()), `unconfirmed` holds how many, and since when
 * (performance.now()).
 */
interface Tail {
  readonly last: Position;
  readonly seq: number;
  readonly id?: string | undefined;
  readonly unconfirmed?: { readonly since: number; readonly count: number };
}

const LOCK_PREFIX = "orisun-publisher:";
const EXPECTED_LAST_ID_HEADER = "Nats-Expected-Last-Msg-Id";
const PAGE = 1_000;
/** Publishes awaiting their ack; enough to hide the round trip, few enough to bound memory. */
const WINDOW = 128;
/**
 * A message asks for JetStream's ack when this many were published since the last confirmation
 * (or CONFIRM_MS passed); the others go without a reply subject, so JetStream stores them
 * without answering and the holder is not woken by an ack for every commit. Each names the id
 * of the message it must follow (JetStream's expected last message id), so once JetStream
 * refuses (or never gets) one, it refuses every later one too: the next ack, or the
 * confirmation of a quiet boundary, shows the stream ending short, and the holder resumes from
 * where it ends. The expected sequence alone would not do: when somebody else's message took
 * the sequence of a refused one, the next one would land after it, and leave a gap.
 */
const ACK_EVERY = 32;
const CONFIRM_MS = 50;
/**
 * Events per message at most. Consecutive events share a message (a 100-event append is one
 * publish, not 100): publishing one event per message cost half the rate of 100-event appends.
 */
const MESSAGE_EVENTS = 256;
/** Room for the headers next to the payload when checking the server's max_payload. */
const HEADER_ROOM = 1_024;
/** How far back from the stream's end to look for the last message this deployment signed. */
const TAIL_SEARCH = 100;
/** Consecutive failures after which the holder hands the boundary to another process. */
const YIELD_AFTER = 5;
const SIT_OUT_MS = 5_000;
const IDLE_MS = 2 * 60_000;
const SWEEP_MS = 5_000;
/** Boundaries one sweep takes up at most; the next sweep finds the rest. */
const SWEEP_LIMIT = 100;
const HAND_OVER_BYTES = 64 * 1024 * 1024;

/**
 * Copies each boundary's committed events, in position order, into its JetStream stream. One
 * process publishes a boundary at a time (a session lock per boundary); the others wait to take
 * over. The holder publishes its own commits from what its appends handed over (HandedOver) and
 * reads the store only for what memory cannot give: the stream's start, a commit another process
 * made (its NOTIFY says so), one that did not fit, or a wait without any signal. A message holds consecutive events (up to MESSAGE_EVENTS, within max_payload). Each
 * carries its last event's position (with a keyed suffix, see MessageAuth) as Nats-Msg-Id and
 * the stream sequence it expects to follow, so JetStream itself refuses a duplicate or a message
 * from a holder that lost its lock but still had publishes buffered: the stream stays in position
 * order whatever happens. Each is signed with the deployment's key.
 *
 * A boundary costs nothing once idle: after `idleMs` without a commit its holder records how far
 * it published (orisun_boundaries.published_*), releases the lock and forgets it; a process that
 * stood by forgets it likewise. A commit signal (its own, or another process's NOTIFY) brings it
 * back. What a lost signal or a dead holder leaves unpublished is found by one bounded sweep over
 * orisun_boundaries: a head past what was published, on a boundary whose lock nobody holds.
 */
export class JetStreamPublisher {
  private readonly boundaries = new Map<string, { wake: Waker; done: Promise<void> }>();
  private readonly closing = new AbortController();
  private jsm: JetStreamManager | undefined;
  private unsignal: (() => void) | undefined;
  private sweeper: NodeJS.Timeout | undefined;
  private readonly held = new Set<string>();
  /**
   * Held boundaries whose publishing failed and has not yet published again: this process's
   * commits to them go with NOTIFY, so that other processes' feeds read them from the store.
   */
  private readonly failing = new Set<string>();
  private readonly handedOver: HandedOver;
  private unhandOver: (() => void) | undefined;
  private unquiet: (() => void) | undefined;
  readonly counts: PublisherCounts = {
    readBacks: 0,
    fromMemory: 0,
    messages: 0,
    acked: 0,
    confirmations: 0,
  };

  constructor(private readonly options: JetStreamPublisherOptions) {
    this.handedOver = new HandedOver(options.handOverBytes ?? HAND_OVER_BYTES);
  }

  /** Estimated bytes of handed-over commits waiting to be published (for tests and metrics). */
  get handedOverBytes(): number {
    return this.handedOver.heldBytes;
  }

  /** Boundaries this process currently publishes (for tests and metrics). */
  get publishing(): ReadonlySet<string> {
    return this.held;
  }

  async start(): Promise<void> {
    this.jsm = await jetstreamManager(this.options.nc);
    // Only a holder keeps its commits: at the start of its turn it reads the log anyway.
    this.unhandOver = this.options.store.onCommit((boundary, _head, events) => {
      if (this.held.has(boundary)) this.handedOver.add(boundary, events);
    });
    // What this process commits to a boundary it holds goes out from memory: nobody else needs
    // its NOTIFY while that works. A standby process learns of such commits from the sweep.
    this.unquiet = this.options.store.commitQuietly(
      (boundary) => this.held.has(boundary) && !this.failing.has(boundary),
    );
    this.unsignal = this.options.store.signals.on((boundary, local) => {
      if (boundary !== undefined) {
        this.know(boundary)?.wake(!local);
        return;
      }
      for (const b of this.boundaries.values()) b.wake.wake(true);
      void this.sweep();
    });
    await this.sweep();
  }

  async close(): Promise<void> {
    this.closing.abort(new Error("closing"));
    this.unsignal?.();
    this.unhandOver?.();
    this.unquiet?.();
    clearTimeout(this.sweeper);
    await Promise.all([...this.boundaries.values()].map((b) => b.done));
  }

  /**
   * Takes up the boundaries that nobody publishes although their head is past what was published:
   * commits made while no publisher ran (at start-up), or whose signal was lost (while deaf), or
   * that a holder died with. One bounded query every `sweepMs`, instead of a poll per boundary.
   */
  private async sweep(): Promise<void> {
    clearTimeout(this.sweeper);
    if (this.closing.signal.aborted || this.storeClosed()) return;
    const { store, log } = this.options;
    try {
      // A held publisher lock shows in pg_locks as (classid, objid) = the key's high and low
      // halves. Boundaries this process follows are left out (PGlite's locks are in memory).
      const { rows } = await sql<{ name: string }>`
        SELECT name FROM orisun_boundaries b
        WHERE (last_commit, last_prepare) <> (published_commit, published_prepare)
          AND NOT (name = ANY(${[...this.boundaries.keys()]}::text[]))
          AND NOT EXISTS (
            SELECT 1 FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND ((l.classid::int8 << 32) | l.objid::int8)
                = hashtextextended(${store.locks.keyText(LOCK_PREFIX)} || b.name, 0))
        LIMIT ${SWEEP_LIMIT}`.execute(store.database.db);
      for (const row of rows) this.know(row.name);
    } catch (error) {
      if (!this.closing.signal.aborted) {
        log.warn({ err: error }, "cannot look for boundaries to publish; retrying");
      }
    }
    if (this.closing.signal.aborted) return;
    this.sweeper = setTimeout(() => void this.sweep(), this.options.sweepMs ?? SWEEP_MS);
  }

  private know(boundary: string): Waker | undefined {
    if (this.closing.signal.aborted) return undefined;
    const known = this.boundaries.get(boundary);
    if (known) return known.wake;
    try {
      streamNames(this.options.namespace, boundary);
    } catch {
      return undefined; // not a boundary of ours: NOTIFY payloads come from anyone
    }
    const wake = new Waker();
    const entry = {
      wake,
      done: this.run(boundary, wake).finally(() => this.forget(boundary, entry)),
    };
    this.boundaries.set(boundary, entry);
    return wake;
  }

  /** Its loop ended (idle or closing): drops the boundary, unless a commit came meanwhile. */
  private forget(boundary: string, entry: { wake: Waker }): void {
    if (this.boundaries.get(boundary) === entry) this.boundaries.delete(boundary);
    if (entry.wake.take()) this.know(boundary);
  }

  /** Takes the boundary's lock whenever it is free and publishes while holding it, until idle. */
  private async run(boundary: string, wake: Waker): Promise<void> {
    const closing = this.closing.signal;
    const { store, log } = this.options;
    if (this.options.defer?.(boundary)) await pause(this.options.lockRetryMs ?? 1_000, closing);
    while (!closing.aborted && !this.storeClosed()) {
      // This attempt answers every wake so far; later ones show in the holder's first wait.
      wake.take();
      let lock: HeldLock | undefined;
      try {
        lock = await store.locks.tryAcquire(LOCK_PREFIX + boundary);
      } catch (error) {
        log.warn({ err: error, boundary }, "cannot try the publisher lock");
      }
      if (!lock) {
        // Another process publishes it: stand by to take over while it has commits. A holder
        // that dies once they stopped leaves what it did not publish to the sweep.
        if (Date.now() - wake.last >= (this.options.idleMs ?? IDLE_MS)) return;
        await pause(this.options.lockRetryMs ?? 1_000, closing);
        continue;
      }
      let end: PublishEnd = "stopped";
      this.held.add(boundary);
      // Lost at the server: this process no longer publishes the boundary from that moment, so its
      // commits carry their NOTIFY again at once, not once the publish loop notices (a read or a
      // JetStream request in flight does not stop for the loss).
      const letGo = () => this.held.delete(boundary);
      lock.lost.addEventListener("abort", letGo, { once: true });
      log.info({ boundary }, "publishing the boundary to JetStream");
      try {
        end = await this.publish(boundary, wake, AbortSignal.any([closing, lock.lost]));
        if (typeof end === "object") await this.markPublished(boundary, end.idle);
      } finally {
        lock.lost.removeEventListener("abort", letGo);
        this.held.delete(boundary);
        this.failing.delete(boundary);
        this.handedOver.drop(boundary);
        this.options.observer?.released(boundary);
        await lock.release();
      }
      if (typeof end === "object") return;
      if (closing.aborted) {
        // A graceful stop: this process's commits to the boundary went without NOTIFY, and the
        // last may not be published yet. Whoever follows the boundary takes it over now, rather
        // than at its sweep.
        await store.announce(boundary).catch((error: unknown) => {
          log.warn({ err: error, boundary }, "could not announce the boundary on closing");
        });
        return;
      }
      if (lock.lost.aborted) {
        log.warn({ err: lock.lost.reason, boundary }, "lost the publisher lock");
        // This process's commits went without NOTIFY while it held the lock: whoever holds it
        // now may have read the log before the last of them.
        await store.announce(boundary);
      }
      // Not at once after a loss: the session just died, or the store is closing, which shows in
      // storeClosed() only a moment later.
      await pause(end === "yielded" ? SIT_OUT_MS : (this.options.lockRetryMs ?? 1_000), closing);
    }
  }

  /** JetStream confirmed the stream through `tail`: publishing works (again). */
  private confirmed(boundary: string, tail: Tail): void {
    this.failing.delete(boundary);
    this.options.observer?.published(boundary, tail.last);
  }

  /** A publisher outliving its store (closed in the wrong order) stops rather than retry forever. */
  private storeClosed(): boolean {
    const { pool, pglite } = this.options.store.database;
    return pool?.ending === true || pglite?.closed === true;
  }

  /**
   * Where the holder writes how far it published before letting the boundary go, so that the
   * sweep can tell a boundary with unpublished commits (and tail() an empty stream's start).
   * Failing costs nothing but a visit by the sweep.
   */
  private async markPublished(boundary: string, through: Position): Promise<void> {
    try {
      await this.options.store.database.db
        .updateTable("orisun_boundaries")
        .set({
          published_commit: through.commit.toString(),
          published_prepare: through.prepare.toString(),
        })
        .where("name", "=", boundary)
        .execute();
    } catch (error) {
      this.options.log.warn({ err: error, boundary }, "cannot record what was published");
    }
  }

  /**
   * Publishes until `signal` aborts or the boundary is idle: a read finds nothing new after
   * `idleMs` without a commit signal, or at once when no signal brought it (the sweep did).
   * "yielded" when it gave up after repeated failures, so that a process cut off from NATS or the
   * database lets a healthier one take the boundary.
   */
  private async publish(boundary: string, wake: Waker, signal: AbortSignal): Promise<PublishEnd> {
    const { store, log } = this.options;
    const idleMs = this.options.idleMs ?? IDLE_MS;
    const lingerMs = this.options.lingerMs ?? 0;
    let failures = 0;
    let idle = wake.last === 0;
    while (!signal.aborted) {
      try {
        let tail = await this.tail(boundary);
        this.options.observer?.published(boundary, tail.last);
        // Whether the log may hold something memory does not: at the start, after a signal of
        // another process's commit, and after a wait that no signal ended.
        let mustRead = true;
        // When this loop last published (performance.now()), for lingerMs.
        let flushed = Number.NEGATIVE_INFINITY;
        const waited = async () => {
          let woken = false;
          if (tail.unconfirmed) {
            woken = await wake.wait(this.options.confirmMs ?? CONFIRM_MS, signal);
            if (!woken && !signal.aborted) {
              tail = await this.confirm(boundary, tail);
              this.confirmed(boundary, tail);
            }
          }
          // A boundary meant for another process is given back once all is published and
          // confirmed, as an idle one is.
          if (!woken && this.options.defer?.(boundary)) return false;
          if (!woken) woken = await wake.wait(idleMs, signal);
          // Commits that come within lingerMs of the last message wait to go out with the rest.
          const linger = flushed + lingerMs - performance.now();
          if (woken && linger > 0) await pause(linger, signal);
          if (wake.takeExternal() || !woken) mustRead = true;
          return woken;
        };
        for (;;) {
          if (signal.aborted) return "stopped";
          let events = this.handedOver.take(boundary, tail.last, PAGE);
          if (events === undefined || (events.length === 0 && mustRead)) {
            // Cleared before the read, so that a signal during it asks for another.
            mustRead = false;
            wake.takeExternal();
            this.counts.readBacks++;
            events = await store.read({
              boundary,
              query: [],
              // `from` is inclusive; in (commit, prepare) order nothing lies between the last
              // event and (its commit, its prepare + 1), so this is exactly "after the last".
              from: { commit: tail.last.commit, prepare: tail.last.prepare + 1n },
              count: PAGE,
              direction: "asc",
            });
            // A full page may not reach the head: memory holds only what comes after it.
            if (events.length === PAGE) mustRead = true;
          } else {
            this.counts.fromMemory += events.length;
          }
          if (events.length === 0) {
            failures = 0;
            if (idle) return { idle: tail.last };
            idle = !(await waited());
            continue;
          }
          tail = await this.publishPage(boundary, events, tail, signal);
          flushed = performance.now();
          if (!tail.unconfirmed) this.confirmed(boundary, tail);
          failures = 0;
          // A short page reached the head: the next read would find nothing unless something
          // committed meanwhile, and then a wake is pending (the waker latches it). Saves one
          // read of the store per commit. Without a wake for idleMs, the next read decides.
          idle = events.length < PAGE && !(await waited());
        }
      } catch (error) {
        if (signal.aborted) return "stopped";
        failures++;
        if (!this.failing.has(boundary)) {
          // Until it publishes again, other processes' feeds hear of this process's commits by
          // NOTIFY; one now for those made quietly and not (or not surely) published.
          this.failing.add(boundary);
          await store.announce(boundary);
        }
        if (failures >= YIELD_AFTER) {
          log.error(
            { err: error, boundary },
            "publishing keeps failing; handing the boundary over",
          );
          return "yielded";
        }
        log.warn({ err: error, boundary }, "publishing failed; resuming from the stream's end");
        await pause(Math.min(250 * 2 ** failures, 5_000), signal);
      }
    }
    return "stopped";
  }

  /**
   * The durable progress: the stream's last event this deployment signed, or for an empty stream
   * its resumePoint. A message anybody else slipped in is passed over: its position must not make
   * the publisher skip real events.
   */
  private async tail(boundary: string): Promise<Tail> {
    const jsm = this.manager();
    const info = await ensureStream(
      jsm,
      this.options.namespace,
      boundary,
      this.options.streamLimits,
    );
    const seq = info.state.last_seq;
    const oldest = Math.max(info.state.first_seq, seq - TAIL_SEARCH + 1, 1);
    // The id of the stream's last message (whoever published it), for the next one to expect.
    let id: string | undefined;
    for (let at = seq; at >= oldest; at--) {
      // Null or a throw: removed meanwhile (aged out or deleted).
      const m = await jsm.streams.getMessage(info.config.name, { seq: at }).catch(() => null);
      if (!m) break;
      if (at === seq) id = m.header?.get(MSG_ID_HEADER) || undefined;
      if (!this.options.auth.verify({ subject: m.subject, headers: m.header, data: m.data })) {
        continue;
      }
      const lastEvent = decodeEvents(m.data).at(-1);
      if (lastEvent) return { last: lastEvent.position, seq, id };
    }
    // Empty (or nothing signed nearby): it goes on from what was published before a holder let
    // the boundary go. New (never published): history is served from the store; the stream
    // carries what commits from now on (a feed fills any gap this leaves from the store).
    return { last: await this.resumePoint(boundary), seq, id };
  }

  /**
   * Confirms the messages published without an ack: the last of them is at the sequence it was
   * meant for (each followed the one before, so then all of them are). When it is not (JetStream
   * refused or never got one), throws, and the holder resumes from where the stream ends.
   */
  private async confirm(boundary: string, published: Tail): Promise<Tail> {
    const { stream } = streamNames(this.options.namespace, boundary);
    this.counts.confirmations++;
    const m = await this.manager()
      .streams.getMessage(stream, { seq: published.seq })
      .catch(() => null);
    if (published.id === undefined || m?.header.get(MSG_ID_HEADER) !== published.id) {
      throw new Error(
        `the stream does not hold ${msgId(published.last)} at sequence ${published.seq}: ` +
          "a publish did not land",
      );
    }
    return { last: published.last, seq: published.seq, id: published.id };
  }

  /** What was published when a holder last let the boundary go, else the store's head. */
  private async resumePoint(boundary: string): Promise<Position> {
    const row = await this.options.store.database.db
      .selectFrom("orisun_boundaries")
      .select(["published_commit", "published_prepare"])
      .where("name", "=", boundary)
      .executeTakeFirst();
    const published = row && {
      commit: BigInt(row.published_commit),
      prepare: BigInt(row.published_prepare),
    };
    if (published && published.prepare > 0n) return published;
    return await this.options.store.head(boundary);
  }

  /**
   * Publishes in order, every ACK_EVERY-th message asking for an ack, with up to WINDOW of those
   * pending; returns the new tail.
   */
  private async publishPage(
    boundary: string,
    events: readonly StoredEvent[],
    tail: Tail,
    signal: AbortSignal,
  ): Promise<Tail> {
    const { subject } = streamNames(this.options.namespace, boundary);
    const { nc, auth } = this.options;
    const js = this.manager().jetstream();
    const limit = (nc.info?.max_payload ?? 1024 * 1024) - HEADER_ROOM;
    // Each message's position and the sequence it takes; an ack (if asked for) must agree.
    const pending: {
      ack: Promise<PubAck> | undefined;
      position: Position;
      seq: number;
      id: string | undefined;
    }[] = [];
    let { last, seq, id: lastId, unconfirmed } = tail;
    let expected = seq;
    let expectedId = lastId;
    let acksPending = 0;
    const settle = async () => {
      const entry = pending.shift();
      if (!entry) return;
      if (entry.ack) {
        acksPending--;
        const ack = await abortable(entry.ack, signal);
        if (ack.duplicate) throw new Error(`${msgId(entry.position)} is in the stream already`);
        if (ack.seq !== entry.seq) {
          throw new Error(`${msgId(entry.position)} took sequence ${ack.seq}, not ${entry.seq}`);
        }
      }
      seq = entry.seq;
      lastId = entry.id;
      last = entry.position;
    };
    const enqueue = async (ack: Promise<PubAck> | undefined, position: Position) => {
      pending.push({ ack, position, seq: expected, id: expectedId });
      if (ack) acksPending++;
      while (acksPending >= WINDOW) await settle();
    };
    // The message being filled: wire texts, their bytes with the brackets and commas, last position.
    let texts: string[] = [];
    let bytes = 2;
    let through: Position | undefined;
    const flush = async () => {
      if (!through) return;
      const payload = encodeEvents(texts);
      const id = auth.messageId(msgId(through));
      const headers = auth.headers(subject, id, payload, expected);
      if (expectedId !== undefined) headers.set(EXPECTED_LAST_ID_HEADER, expectedId);
      let ack: Promise<PubAck> | undefined;
      const now = performance.now();
      this.counts.messages++;
      if (
        unconfirmed &&
        (unconfirmed.count + 1 >= ACK_EVERY ||
          now - unconfirmed.since >= (this.options.confirmMs ?? CONFIRM_MS))
      ) {
        ack = js.publish(subject, payload, { headers });
        // Awaited in settle(); this only keeps a failure after an earlier one from going unhandled.
        ack.catch(() => {});
        this.counts.acked++;
        unconfirmed = undefined;
      } else {
        nc.publish(subject, payload, { headers });
        unconfirmed = { since: unconfirmed?.since ?? now, count: (unconfirmed?.count ?? 0) + 1 };
      }
      expected++;
      expectedId = id;
      const position = through;
      texts = [];
      bytes = 2;
      through = undefined;
      await enqueue(ack, position);
    };
    for (const event of events) {
      if (signal.aborted) break;
      const text = wireText(event);
      const size = Buffer.byteLength(text);
      if (size + 2 > limit) {
        await flush();
        // The feed notices the gap in prepare positions and reads the event from the store.
        this.options.log.warn(
          { boundary, position: msgId(event.position), bytes: size },
          "event larger than NATS max_payload; left out of the live stream",
        );
        await enqueue(undefined, event.position);
        continue;
      }
      if (bytes + size + 1 > limit || texts.length >= MESSAGE_EVENTS) await flush();
      texts.push(text);
      bytes += size + 1;
      through = event.position;
    }
    if (!signal.aborted) await flush();
    while (pending.length > 0 && !signal.aborted) await settle();
    return { last, seq, id: lastId, unconfirmed };
  }

  private manager(): JetStreamManager {
    if (!this.jsm) throw new Error("JetStreamPublisher used before start()");
    return this.jsm;
  }
}

export function msgId(position: Position): string {
  return `${position.commit}:${position.prepare}`;
}
