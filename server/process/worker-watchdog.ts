import type { Worker } from "node:cluster";

/**
 * The primary's watch over its workers' event loops.
 *
 * A worker whose event loop no longer turns (a synchronous loop that never ends, a deadlocked
 * native call, a stopped process) is alive to the operating system and invisible to a health
 * probe: the primary hands the probe's connection to a worker that answers. Yet it holds its
 * clients' connections and calls, and the appends other workers sent it before they found it
 * silent (boundary-owners.ts). So the primary asks each ready worker over its IPC channel, every
 * tenth of the stall timeout or every second, whichever comes sooner; the worker answers from
 * its event loop. One that has answered none of the asks of a whole stall timeout is killed
 * (SIGKILL: a stuck loop would never run a SIGTERM handler), and the supervisor replaces it as it
 * replaces any worker that dies.
 *
 * The count is of asks sent, not of time passed: a primary that was itself stopped or starved
 * sent none meanwhile, and so blames no worker for its own pause.
 */
type Message = { readonly orisun: "ping" } | { readonly orisun: "pong" };

const isMessage = (value: unknown): value is Message =>
  typeof value === "object" &&
  value !== null &&
  ((value as { orisun?: unknown }).orisun === "ping" ||
    (value as { orisun?: unknown }).orisun === "pong");

export interface WatchdogLog {
  error(obj: object, msg: string): void;
}

interface Watched {
  /** Asks sent since the worker last answered. */
  unanswered: number;
  readonly onMessage: (message: unknown) => void;
}

export class WorkerWatchdog {
  private readonly watched = new Map<Worker, Watched>();
  private readonly timer: NodeJS.Timeout;
  /** Asks without an answer that make a worker stalled. */
  private readonly limit: number;

  constructor(
    /** ORISUN_WORKER_STALL_TIMEOUT. */
    private readonly stallMs: number,
    private readonly log: WatchdogLog,
    /** Told of each worker it kills, before the kill. */
    private readonly onStalled?: (worker: Worker) => void,
  ) {
    // Every tenth of the timeout or every second, whichever is sooner, and at least 100 ms apart.
    const intervalMs = Math.min(1_000, Math.max(100, Math.floor(stallMs / 10)));
    this.limit = Math.ceil(stallMs / intervalMs);
    this.timer = setInterval(() => this.tick(), intervalMs);
    this.timer.unref();
  }

  /** Watches a worker from now on (once it serves: start-up has a timeout of its own). */
  watch(worker: Worker): void {
    if (this.watched.has(worker)) return;
    const watched: Watched = {
      unanswered: 0,
      onMessage: (message) => {
        if (isMessage(message) && message.orisun === "pong") watched.unanswered = 0;
      },
    };
    this.watched.set(worker, watched);
    worker.on("message", watched.onMessage);
    worker.once("exit", () => this.forget(worker));
  }

  stop(): void {
    clearInterval(this.timer);
    for (const worker of [...this.watched.keys()]) this.forget(worker);
  }

  private forget(worker: Worker): void {
    const watched = this.watched.get(worker);
    if (watched === undefined) return;
    worker.off("message", watched.onMessage);
    this.watched.delete(worker);
  }

  private tick(): void {
    for (const [worker, watched] of this.watched) {
      if (!worker.isConnected()) continue;
      if (watched.unanswered >= this.limit) {
        this.log.error(
          { worker: worker.process.pid, stallMs: this.stallMs },
          "worker's event loop has not run for ORISUN_WORKER_STALL_TIMEOUT; killing it",
        );
        this.forget(worker);
        this.onStalled?.(worker);
        worker.process.kill("SIGKILL");
        continue;
      }
      watched.unanswered++;
      // A worker that has just gone (its exit not yet heard) fails the send: the supervisor's
      // "error" listener on every worker logs it.
      worker.send({ orisun: "ping" } satisfies Message);
    }
  }
}

/** The worker's side: answers the primary's asks from this process's event loop. */
export function answerWatchdog(): void {
  process.on("message", (message: unknown) => {
    if (isMessage(message) && message.orisun === "ping" && process.connected) {
      process.send?.({ orisun: "pong" } satisfies Message, undefined, undefined, () => {});
    }
  });
}
