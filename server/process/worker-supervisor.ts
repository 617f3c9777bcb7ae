import cluster, { type Worker } from "node:cluster";
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import type { PrimaryMetrics } from "../observability/primary-metrics.js";
import { ConnectionHandoff } from "./connection-handoff.js";
import { makeSocketDir, removeStaleSocketDirs } from "./socket-dirs.js";
import { SLOT_ENV, SLOTS_ENV, SOCKETS_ENV } from "./worker-slots.js";
import { WorkerWatchdog } from "./worker-watchdog.js";

export interface SupervisorLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface SupervisorOptions {
  readonly workers: number;
  /** The one port (ORISUN_PORT, ORISUN_HOST): the primary listens, the workers are handed connections. */
  readonly port: number;
  readonly host: string;
  readonly log: SupervisorLog;
  /** ORISUN_WORKER_STALL_TIMEOUT: a serving worker whose event loop has not run this long is killed. */
  readonly stallMs?: number;
  /** Restarts, rerouted connections and serving workers, for the cluster's scrape. */
  readonly metrics?: PrimaryMetrics;
  /** How long workers get to drain after SIGTERM/SIGINT before they are killed. */
  readonly stopGraceMs?: number;
  /** First restart delay of a worker that keeps dying; it doubles up to `maxRestartDelayMs`. */
  readonly restartDelayMs?: number;
  readonly maxRestartDelayMs?: number;
  /** A worker that served this long before dying is restarted at once (no crash loop). */
  readonly stableMs?: number;
}

/** One slot per wanted worker: who holds it, and how its recent deaths went. */
interface Slot {
  worker: Worker | undefined;
  startedAt: number;
  /** Deaths in a row, each within `stableMs` of its start. */
  quickDeaths: number;
  timer: NodeJS.Timeout | undefined;
}

/**
 * The cluster primary: forks `workers` server processes that share the one port (the primary
 * accepts connections and hands them out in turn, so a few long-lived HTTP/2 connections still
 * spread over every worker: connection-handoff.ts), replaces a worker that dies, and drains all
 * of them on SIGTERM/SIGINT. A worker that dies again soon after its start waits longer each time
 * (up to `maxRestartDelayMs`), so a crash loop does not spin. If no worker ever came up, start-up
 * failed (bad database, timeout): the primary exits with the first worker's code instead of
 * retrying for ever, so that whoever runs it sees the failure.
 *
 * The primary holds no store, no connection and nothing of the API: correctness never depends on
 * it, only availability.
 */
export function superviseWorkers(options: SupervisorOptions): void {
  const { log } = options;
  const grace = options.stopGraceMs ?? 15_000;
  const firstDelay = options.restartDelayMs ?? 500;
  const maxDelay = options.maxRestartDelayMs ?? 30_000;
  const stableMs = options.stableMs ?? 30_000;
  const slots: Slot[] = Array.from({ length: options.workers }, () => ({
    worker: undefined,
    startedAt: 0,
    quickDeaths: 0,
    timer: undefined,
  }));
  let everListening = false;
  let stopping = false;
  let exitCode = 0;
  // Where the workers listen for each other's appends (boundary-owners.ts): a directory only
  // this user can enter (mkdtemp makes it 0700), one socket per slot, removed on exit; those
  // left by primaries that were killed go first (socket-dirs.ts).
  // A Unix socket's path has room for about 100 bytes: a long TMPDIR falls back to /tmp.
  const base = tmpdir().length <= 60 ? tmpdir() : "/tmp";
  const stale = removeStaleSocketDirs(base);
  if (stale.length > 0)
    log.info({ dirs: stale, base }, "removed socket directories of primaries that are gone");
  const sockets = makeSocketDir(base);
  process.on("exit", () => rmSync(sockets, { recursive: true, force: true }));
  const { metrics } = options;
  const handoff = new ConnectionHandoff(
    options.port,
    options.host,
    log,
    metrics && {
      rerouted: () => metrics.reroutedConnection(),
      serving: (count) => metrics.setServing(count),
    },
  );
  // Workers the watchdog killed: their restart is counted as stalled.
  const stalled = new WeakSet<Worker>();
  const watchdog = new WorkerWatchdog(options.stallMs ?? 30_000, log, (worker) =>
    stalled.add(worker),
  );

  const fork = (slot: Slot) => {
    slot.timer = undefined;
    slot.startedAt = Date.now();
    const worker = cluster.fork({
      [SLOT_ENV]: String(slots.indexOf(slot)),
      [SLOTS_ENV]: String(slots.length),
      [SOCKETS_ENV]: sockets,
    });
    slot.worker = worker;
    // A message to a worker that has just died, before its exit is heard (the primary's sends,
    // and prom-client's collection of metrics), fails with the channel closed; without a
    // listener, that error would end the primary and every worker with it. Its exit follows.
    worker.on("error", (error) => {
      log.warn({ worker: worker.process.pid, err: error }, "cannot reach a worker over IPC");
    });
    handoff.add(worker, () => {
      everListening = true;
      watchdog.watch(worker);
    });
    worker.once("exit", (code, signal) => {
      slot.worker = undefined;
      if (stopping) {
        // A worker still starting has no handler yet and dies of the SIGTERM itself: it served
        // nothing, so that is a clean stop too.
        if (code !== 0 && signal !== "SIGTERM") exitCode = 1;
        if (slots.every((s) => s.worker === undefined)) process.exit(exitCode);
        return;
      }
      if (!everListening) {
        // Every worker runs the same start-up: one that failed before any served means all will.
        log.error({ worker: worker.process.pid, code, signal }, "worker failed to start; exiting");
        stopAll(code === 0 || code === null ? 1 : code);
        return;
      }
      const lived = Date.now() - slot.startedAt;
      slot.quickDeaths = lived < stableMs ? slot.quickDeaths + 1 : 0;
      const delay =
        slot.quickDeaths === 0 ? 0 : Math.min(maxDelay, firstDelay * 2 ** (slot.quickDeaths - 1));
      metrics?.restarted(stalled.has(worker) ? "stalled" : "exited");
      log.error(
        { worker: worker.process.pid, code, signal, livedMs: lived, restartInMs: delay },
        "worker died; starting a new one",
      );
      slot.timer = setTimeout(() => fork(slot), delay);
    });
  };

  const stopAll = (code: number) => {
    if (stopping) return;
    stopping = true;
    exitCode = code;
    handoff.close();
    // Draining workers are killed after the grace period, stuck or not.
    watchdog.stop();
    for (const slot of slots) clearTimeout(slot.timer);
    const alive = slots.flatMap((s) => (s.worker ? [s.worker] : []));
    if (alive.length === 0) process.exit(exitCode);
    for (const worker of alive) worker.process.kill("SIGTERM");
    setTimeout(() => {
      log.warn({ graceMs: grace }, "workers still running after the grace period; killing them");
      for (const worker of alive) worker.process.kill("SIGKILL");
    }, grace).unref();
  };

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.on(signal, () => {
      log.info({ signal, workers: slots.length }, "shutting down the workers");
      stopAll(0);
    });
  }
  log.info({ workers: options.workers }, "starting workers");
  for (const slot of slots) fork(slot);
}
