import { unlinkSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { currentTrace, withinTrace } from "../observability/tracing.js";
import { inFlight, RETRY_SAME_IDS } from "../store/append.js";
import { StoreError } from "../store/errors.js";
import type { CallOptions, EventStore } from "../store/event-store.js";
import type { AppendRequest, Position } from "../store/types.js";
import { encodeFrame, type Frame, FrameKind, FrameReader } from "./forward-wire.js";
import { socketPath, type WorkerSlots } from "./worker-slots.js";

/** The slot of the worker that commits `boundary`'s appends: FNV-1a of its name, mod `slots`. */
export function ownerOf(boundary: string, slots: number): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < boundary.length; i++) {
    hash ^= boundary.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return (hash >>> 0) % slots;
}

export interface BoundaryOwnersOptions {
  readonly slots: WorkerSlots;
  readonly store: EventStore;
  readonly log: { warn(obj: object, msg: string): void };
  /** The largest frame accepted: the largest append request, with room. */
  readonly maxFrameBytes: number;
  /** How long a worker that could not be reached is passed over (its boundaries' appends commit here). */
  readonly retryMs?: number;
  /** How long a forward whose caller gave up waits for the owner's answer before giving up too. */
  readonly abandonMs?: number;
  /**
   * How long an owner that was sent something may stay silent (answer nothing at all) before this
   * worker stops sending it appends and commits them itself, until it is heard again.
   */
  readonly silentMs?: number;
  /** How long a closing owner waits for forwarders to finish with its connections. */
  readonly goodbyeMs?: number;
}

/** How appends were routed (for tests and metrics). */
export interface OwnerCounts {
  /** Sent to the worker that owns the boundary. */
  forwarded: number;
  /** Received from another worker and committed here. */
  served: number;
  /** Owned by another worker that could not be reached, so committed here. */
  fellBack: number;
}

/**
 * Sends each append to the one worker that commits its boundary. With several workers, a
 * boundary's appends are serialised by its row lock whichever process makes them, and each
 * process commits its own waiting appends as one transaction (group commit); a hot boundary
 * written through every worker then gets a transaction per worker per round, each carrying a
 * share, and half the throughput with two. Routed to one owner (by a hash of the name), all of a
 * boundary's appends meet in one process's group commit, and its in-memory condition window is
 * always at the head.
 *
 * Routing is only about speed: any process may commit any boundary, so an owner that cannot be
 * reached (restarting, not yet listening) is passed over for `retryMs` and its appends commit
 * where they arrived. So is an owner that is reached but has answered nothing for `silentMs`
 * since it was sent something (its event loop stuck, or the process stopped: the primary's
 * watchdog kills it only much later): what was sent to it waits for it, or for its callers'
 * deadlines, and new appends commit here until it is heard again. Only an owner that dies with
 * an append in hand leaves its outcome unknown, as a dying worker does for its own calls
 * (`unavailable`: retry with the same ids).
 */
export class BoundaryOwners {
  readonly counts: OwnerCounts = { forwarded: 0, served: 0, fellBack: 0 };
  private readonly peers: Peer[];
  private readonly server: Server;
  private readonly served = new Set<Socket>();
  private readonly inHand = new Set<Promise<unknown>>();
  private unroute: (() => void) | undefined;
  private closing = false;

  private constructor(private readonly options: BoundaryOwnersOptions) {
    const { slots } = options.slots;
    this.peers = Array.from({ length: slots }, (_, slot) => new Peer(slot, options));
    this.server = createServer((socket) => this.serve(socket));
  }

  /** Listens for other workers' appends, then routes this worker's own. */
  static async start(options: BoundaryOwnersOptions): Promise<BoundaryOwners> {
    const owners = new BoundaryOwners(options);
    const path = socketPath(options.slots.dir, options.slots.slot);
    try {
      unlinkSync(path); // the socket of the worker this one replaces
    } catch {}
    await new Promise<void>((resolve, reject) => {
      owners.server.once("error", reject);
      // Exclusive: the socket is this worker's own. In a cluster worker, node:cluster otherwise
      // has the primary listen on the path and pass each connection on, and a connection the
      // primary accepts for a worker that has just died stays open in the primary, unanswered:
      // the other workers' forwarded appends then waited on it for ever instead of finding the
      // owner gone and committing themselves.
      owners.server.listen({ path, exclusive: true }, () => {
        owners.server.off("error", reject);
        resolve();
      });
    });
    owners.unroute = options.store.routeAppends((request, call) => owners.append(request, call));
    return owners;
  }

  /**
   * Another worker owns the boundary and did not fail to answer a moment ago: that worker commits
   * its appends, so it is the one to publish them.
   */
  defersTo(boundary: string): boolean {
    const { slot, slots } = this.options.slots;
    const owner = ownerOf(boundary, slots);
    return owner !== slot && this.peers[owner]?.reachable === true;
  }

  append(request: AppendRequest, call: CallOptions): Promise<Position> {
    const { store, slots } = this.options;
    const owner = ownerOf(request.boundary, slots.slots);
    // A call already over is refused here as appendHere refuses it, with nothing sent.
    if (owner === slots.slot || this.closing || call.signal?.aborted) {
      return store.appendHere(request, call);
    }
    const forwarded = this.peers[owner]?.forward(request, call.signal);
    if (!forwarded) {
      this.counts.fellBack++;
      return store.appendHere(request, call);
    }
    this.counts.forwarded++;
    return forwarded.then((answer) => {
      if (answer !== "not delivered") return answer;
      this.counts.forwarded--;
      this.counts.fellBack++;
      return store.appendHere(request, call);
    });
  }

  /** Another worker's connection: each append frame is committed here and answered. */
  private serve(socket: Socket): void {
    this.served.add(socket);
    const reader = new FrameReader(this.options.maxFrameBytes);
    const running = new Map<number, AbortController>();
    const reply = (frame: Frame) => {
      if (!socket.destroyed) socket.write(encodeFrame(frame));
    };
    socket.on("data", (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = reader.push(chunk);
      } catch (error) {
        this.options.log.warn({ err: error }, "a worker sent a frame that does not parse; closing");
        socket.destroy();
        return;
      }
      for (const frame of frames) {
        if (frame.kind === FrameKind.cancel) running.get(frame.id)?.abort();
        if (frame.kind !== FrameKind.append) continue;
        const { id } = frame;
        const cancel = new AbortController();
        running.set(id, cancel);
        this.counts.served++;
        const done = withinTrace(frame.trace, () =>
          this.options.store.appendHere(frame.request, { signal: cancel.signal }),
        )
          .then(
            (position) => reply({ kind: FrameKind.ok, id, position }),
            (error: unknown) => reply({ kind: FrameKind.error, id, error: asStoreError(error) }),
          )
          .finally(() => {
            running.delete(id);
            this.inHand.delete(done);
          });
        this.inHand.add(done);
      }
    });
    // The forwarder is gone: nobody waits for these answers (as for a client that went away).
    socket.on("close", () => {
      this.served.delete(socket);
      for (const cancel of running.values()) cancel.abort();
    });
    socket.on("error", () => {});
  }

  /**
   * Stops routing and serving: forwarders hear GOODBYE, stop sending and close their side once
   * answered; what they sent before is still committed and answered here.
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.unroute?.();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const socket of this.served) socket.write(encodeFrame({ kind: FrameKind.goodbye, id: 0 }));
    const waited = setTimeout(() => {
      for (const socket of this.served) socket.destroy();
    }, this.options.goodbyeMs ?? 5_000);
    await closed;
    clearTimeout(waited);
    await Promise.allSettled([...this.inHand]);
    for (const peer of this.peers) peer.close();
  }
}

function asStoreError(error: unknown): StoreError {
  if (error instanceof StoreError) return error;
  return new StoreError(
    "internal",
    `the worker that commits the boundary failed while appending, so the append may or may not be stored; ${RETRY_SAME_IDS}`,
  );
}

interface Waiting {
  readonly resolve: (answer: Position | "not delivered") => void;
  readonly reject: (error: StoreError) => void;
}

/** One connection to a worker, and the appends sent on it that await their answer. */
interface Link {
  readonly socket: Socket;
  connected: boolean;
  /** The worker said GOODBYE: nothing more is sent on it, and it ends once answered. */
  retired: boolean;
  readonly waiting: Map<number, Waiting>;
  /** When something was first sent after the worker was last heard (performance.now()). */
  unansweredSince: number | undefined;
  /** The silence was logged. */
  silenceLogged: boolean;
}

/** This worker's connection to one other worker, made when first needed. */
class Peer {
  private link: Link | undefined;
  private downUntil = 0;
  private nextId = 1;

  constructor(
    private readonly slot: number,
    private readonly options: BoundaryOwnersOptions,
  ) {}

  /** Not passed over after a failure to reach it. */
  get reachable(): boolean {
    return performance.now() >= this.downUntil;
  }

  /**
   * Sends the append to this worker; resolves to its position, or "not delivered" when the
   * connection never opened (commit it elsewhere). Undefined: the worker was unreachable a moment
   * ago, so do not try.
   */
  forward(
    request: AppendRequest,
    signal: AbortSignal | undefined,
  ): Promise<Position | "not delivered"> | undefined {
    const now = performance.now();
    if (now < this.downUntil) return undefined;
    const link = this.link ?? this.connect();
    if (this.silent(link, now)) return undefined;
    const id = this.nextId;
    this.nextId = this.nextId === 0xffff_ffff ? 1 : this.nextId + 1;
    return new Promise((resolve, reject) => {
      let abandon: NodeJS.Timeout | undefined;
      const onAbort = () => {
        if (link.connected && !link.socket.destroyed)
          this.send(link, { kind: FrameKind.cancel, id });
        // The owner answers a cancel at once; one that does not is stuck, and the caller is gone.
        abandon = setTimeout(() => {
          settled();
          reject(inFlight());
        }, this.options.abandonMs ?? 1_000);
      };
      const settled = () => {
        link.waiting.delete(id);
        clearTimeout(abandon);
        signal?.removeEventListener("abort", onAbort);
        if (link.retired && link.waiting.size === 0) link.socket.end();
      };
      link.waiting.set(id, {
        resolve: (answer) => {
          settled();
          resolve(answer);
        },
        reject: (error) => {
          settled();
          reject(error);
        },
      });
      signal?.addEventListener("abort", onAbort, { once: true });
      this.send(link, { kind: FrameKind.append, id, request, trace: currentTrace() });
    });
  }

  private send(link: Link, frame: Frame): void {
    link.unansweredSince ??= performance.now();
    link.socket.write(encodeFrame(frame));
  }

  /**
   * Sent something `silentMs` ago and heard nothing since: passed over for `retryMs` (and again
   * after, for as long as it stays silent).
   */
  private silent(link: Link, now: number): boolean {
    const since = link.unansweredSince;
    if (since === undefined || now - since <= (this.options.silentMs ?? 2_000)) return false;
    this.downUntil = now + (this.options.retryMs ?? 1_000);
    if (!link.silenceLogged) {
      link.silenceLogged = true;
      this.options.log.warn(
        { worker: this.slot, silentMs: Math.round(now - since) },
        "the worker that commits these boundaries has answered nothing since it was sent an append; this worker commits their appends itself until it answers",
      );
    }
    return true;
  }

  private connect(): Link {
    const socket = createConnection(socketPath(this.options.slots.dir, this.slot));
    const link: Link = {
      socket,
      connected: false,
      retired: false,
      waiting: new Map(),
      unansweredSince: undefined,
      silenceLogged: false,
    };
    this.link = link;
    const reader = new FrameReader(this.options.maxFrameBytes);
    socket.on("connect", () => {
      link.connected = true;
    });
    socket.on("data", (chunk: Buffer) => {
      // Heard: whatever it answers, it runs.
      link.unansweredSince = undefined;
      link.silenceLogged = false;
      let frames: Frame[];
      try {
        frames = reader.push(chunk);
      } catch (error) {
        this.options.log.warn(
          { err: error, worker: this.slot },
          "a worker answered with a frame that does not parse; closing the connection",
        );
        socket.destroy();
        return;
      }
      for (const frame of frames) {
        if (frame.kind === FrameKind.goodbye) this.retire(link);
        else if (frame.kind === FrameKind.ok) link.waiting.get(frame.id)?.resolve(frame.position);
        else if (frame.kind === FrameKind.error) link.waiting.get(frame.id)?.reject(frame.error);
      }
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      if (this.link === link) this.link = undefined;
      if (!link.connected) this.downUntil = performance.now() + (this.options.retryMs ?? 1_000);
      for (const waiting of [...link.waiting.values()]) {
        if (!link.connected) waiting.resolve("not delivered");
        else
          waiting.reject(
            new StoreError(
              "unavailable",
              `the worker that commits the boundary went away while appending, so the append may or may not be stored; ${RETRY_SAME_IDS}`,
            ),
          );
      }
    });
    return link;
  }

  /** The worker is stopping: send it nothing more, and end the connection once it answered. */
  private retire(link: Link): void {
    link.retired = true;
    if (this.link === link) this.link = undefined;
    this.downUntil = performance.now() + (this.options.retryMs ?? 1_000);
    if (link.waiting.size === 0) link.socket.end();
  }

  close(): void {
    this.link?.socket.destroy();
    this.link = undefined;
  }
}
