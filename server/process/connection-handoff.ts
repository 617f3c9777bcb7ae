import type { Worker } from "node:cluster";
import { createServer, type Server, Socket } from "node:net";
import { rateLimited } from "../http/connection-guard.js";

/**
 * The cluster's one port, and how its connections reach the workers.
 *
 * The primary accepts each connection (without reading from it) and passes it to the next worker
 * that is ready, in turn, over the worker's IPC channel. Its own copy it closes once the worker
 * says it has the connection, and at once for every connection a worker had not yet confirmed
 * when that worker dies: the client sees the connection close, and connects again.
 * node:cluster's round-robin (and child_process's own handle passing) keep their copy until the
 * receiving worker acknowledges it, and a worker that dies first never does: the connection
 * stayed open in the primary, unanswered, and a client that keeps its connection (connect-node
 * does for good; grpc-js until its connect timeout) timed out call after call on it.
 *
 * A worker that is alive but not running (its event loop blocked, or swamped) confirms nothing:
 * once one of its connections has waited BEHIND_MS unconfirmed, new connections go to the other
 * workers until it has taken up the ones it was sent (those it must serve itself once it runs:
 * they are already in its channel). Only when every worker is behind do they get them in turn.
 */
type Message =
  /** Worker to primary: serving; hand me connections. Primary to worker: the port, once listening. */
  | { readonly orisun: "ready"; readonly port?: number }
  /** Worker to primary: stopping; hand me no more. */
  | { readonly orisun: "draining" }
  /** Primary to worker: a connection (the socket travels with the message). */
  | { readonly orisun: "connection"; readonly id: number }
  /** Worker to primary: it holds that connection now. */
  | { readonly orisun: "adopted"; readonly id: number };

const isMessage = (value: unknown): value is Message =>
  typeof value === "object" && value !== null && "orisun" in value;

/** Told how connections are handed out (primary-metrics.ts). */
export interface HandoffObserver {
  /** A connection went to another worker because the one in turn was behind. */
  rerouted(): void;
  /** How many workers get connections now. */
  serving(count: number): void;
}

export interface HandoffLog {
  error(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  info(obj: object, msg: string): void;
}

/**
 * How long a connection may wait for its worker's confirmation before the worker counts as
 * behind. A worker that runs confirms within milliseconds, even under load; a garbage
 * collection pauses it for tens.
 */
export const BEHIND_MS = 1_000;

interface Unconfirmed {
  readonly socket: Socket;
  /** When it was sent (performance.now()). */
  readonly at: number;
}

/** The primary's side: listens once a worker is ready, hands connections to ready workers in turn. */
export class ConnectionHandoff {
  private readonly ready: Worker[] = [];
  /** Connections sent to a worker that it has not yet confirmed, by worker and id. */
  private readonly unconfirmed = new Map<Worker, Map<number, Unconfirmed>>();
  /** Workers that new connections currently go around (logged once each time). */
  private readonly skipped = new Set<Worker>();
  private readonly server: Server;
  private next = 0;
  private nextId = 1;
  private listening: Promise<number> | undefined;
  private closed = false;

  constructor(
    private readonly port: number,
    private readonly host: string,
    private readonly log: HandoffLog,
    private readonly observer?: HandoffObserver,
  ) {
    // pauseOnConnect: the primary never reads a byte; the worker reads all of it.
    this.server = createServer({ pauseOnConnect: true, noDelay: true }, (socket) =>
      this.handOut(socket),
    );
    // A failed accept is emitted here: logged (a burst as one line every 10 s, with a count)
    // rather than ending the primary, and with it every worker. (Out of descriptors, libuv
    // accepts and closes the waiting connections itself and emits nothing: the clients connect
    // again.)
    const warn = rateLimited((fields, message) => log.error(fields, message));
    this.server.on("error", (error) => {
      if (this.server.listening) warn({ err: error }, "cannot accept a connection");
    });
  }

  /** Follows a new worker: it gets connections once it says it is ready, none once it drains. */
  add(worker: Worker, onReady: () => void): void {
    const sent = new Map<number, Unconfirmed>();
    this.unconfirmed.set(worker, sent);
    worker.on("message", (message: unknown) => {
      if (!isMessage(message)) return;
      if (message.orisun === "adopted") {
        sent.get(message.id)?.socket.destroy();
        sent.delete(message.id);
        if (this.skipped.has(worker) && !this.behind(worker, performance.now())) {
          this.skipped.delete(worker);
          this.log.info(
            { worker: worker.process.pid },
            "worker took up the connections sent to it; it gets new ones again",
          );
        }
      } else if (message.orisun === "ready") {
        this.listen().then(
          (port) => {
            if (!worker.isConnected()) return;
            // A worker gone meanwhile fails the send: the supervisor's "error" listener logs it.
            worker.send({ orisun: "ready", port } satisfies Message);
            if (!this.ready.includes(worker)) this.ready.push(worker);
            this.observer?.serving(this.ready.length);
            onReady();
          },
          (error: unknown) => {
            this.log.error(
              { err: error, host: this.host, port: this.port },
              "cannot listen on ORISUN_HOST:ORISUN_PORT; stopping",
            );
            worker.process.kill("SIGTERM");
          },
        );
      } else if (message.orisun === "draining") this.remove(worker);
    });
    worker.once("disconnect", () => this.remove(worker));
    worker.once("exit", () => {
      this.remove(worker);
      // Never taken up: closing the primary's copy closes the connection.
      for (const { socket } of sent.values()) socket.destroy();
      this.unconfirmed.delete(worker);
      this.skipped.delete(worker);
    });
  }

  /** Stops accepting; connections already handed out are the workers'. */
  close(): void {
    this.closed = true;
    this.ready.length = 0;
    if (this.server.listening) this.server.close();
  }

  private remove(worker: Worker): void {
    const at = this.ready.indexOf(worker);
    if (at >= 0) this.ready.splice(at, 1);
    this.observer?.serving(this.ready.length);
  }

  /** Listens on the port the first time a worker is ready (before, a client is refused). */
  private listen(): Promise<number> {
    this.listening ??= new Promise<number>((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(this.port, this.host, () => {
        this.server.off("error", reject);
        const address = this.server.address();
        resolve(typeof address === "object" && address !== null ? address.port : this.port);
      });
    });
    return this.listening;
  }

  private handOut(socket: Socket): void {
    // Nobody to take it (every worker restarting, or stopping): the client connects again.
    const worker = this.closed ? undefined : this.pick();
    const sent = worker && this.unconfirmed.get(worker);
    if (worker === undefined || sent === undefined) {
      socket.destroy();
      return;
    }
    const id = this.nextId++;
    sent.set(id, { socket, at: performance.now() });
    // keepOpen: the primary's copy stays open until the worker confirms it (see above).
    worker.send(
      { orisun: "connection", id } satisfies Message,
      socket,
      { keepOpen: true },
      (error) => {
        if (!error) return;
        sent.delete(id);
        socket.destroy();
      },
    );
  }

  /** The next ready worker in turn that is not behind; if every one is, the next in turn. */
  private pick(): Worker | undefined {
    const now = performance.now();
    let first: Worker | undefined;
    for (let tried = 0; tried < this.ready.length; ) {
      const worker = this.ready[this.next++ % this.ready.length] as Worker;
      if (!worker.isConnected()) {
        this.remove(worker);
        continue;
      }
      tried++;
      first ??= worker;
      if (!this.behind(worker, now)) {
        if (worker !== first) this.observer?.rerouted();
        return worker;
      }
      if (!this.skipped.has(worker)) {
        this.skipped.add(worker);
        this.log.warn(
          {
            worker: worker.process.pid,
            unconfirmed: this.unconfirmed.get(worker)?.size,
            behindMs: BEHIND_MS,
          },
          "worker has not taken up a connection sent to it; new connections go to the other workers",
        );
      }
    }
    return first;
  }

  /** Whether the oldest connection the worker has not confirmed was sent over BEHIND_MS ago. */
  private behind(worker: Worker, now: number): boolean {
    // A Map iterates in insertion order: the first entry is the oldest.
    const oldest = this.unconfirmed.get(worker)?.values().next().value;
    return oldest !== undefined && now - oldest.at > BEHIND_MS;
  }
}

/**
 * The worker's side: says it is ready, waits for the port the primary listens on, and from then
 * on gives every connection the primary hands it to `adopt`, confirming each. `draining` tells
 * the primary to hand it no more.
 */
export async function takeHandedConnections(
  adopt: (socket: Socket) => void,
): Promise<{ port: number; draining(): void }> {
  const send = (message: Message) => {
    if (process.connected) process.send?.(message);
  };
  const port = new Promise<number>((resolve) => {
    process.on("message", (message: unknown, handle: unknown) => {
      if (!isMessage(message)) return;
      if (message.orisun === "ready" && message.port !== undefined) resolve(message.port);
      else if (message.orisun === "connection" && handle instanceof Socket) {
        send({ orisun: "adopted", id: message.id });
        adopt(handle);
      }
    });
  });
  send({ orisun: "ready" });
  return { port: await port, draining: () => send({ orisun: "draining" }) };
}
