import type { Worker } from "node:cluster";
import { EventEmitter } from "node:events";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { WorkerWatchdog } from "../server/process/worker-watchdog.js";

/** A worker's IPC side as the watchdog sees it: asks are counted, answers sent by the test. */
class FakeWorker extends EventEmitter {
  asks = 0;
  killed: string | undefined;
  readonly process = { pid: 4242, kill: (signal: string) => (this.killed = signal) };
  isConnected = () => this.killed === undefined;
  send(_message: unknown) {
    this.asks++;
    return true;
  }
  answer() {
    this.emit("message", { orisun: "pong" });
  }
}

const watchdogFor = (stallMs: number) => {
  const errors: object[] = [];
  const watchdog = new WorkerWatchdog(stallMs, { error: (fields) => errors.push(fields) });
  const worker = new FakeWorker();
  watchdog.watch(worker as unknown as Worker);
  return { watchdog, worker, errors };
};

describe("WorkerWatchdog", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("asks once a second under the 30 s default and kills a worker silent for 30 s, not before", () => {
    const { watchdog, worker, errors } = watchdogFor(30_000);
    vi.advanceTimersByTime(30_000);
    expect(worker.asks).toBe(30);
    expect(worker.killed).toBeUndefined();
    vi.advanceTimersByTime(1_000);
    expect(worker.killed).toBe("SIGKILL");
    expect(errors).toEqual([{ worker: 4242, stallMs: 30_000 }]);
    // Forgotten once killed: no more asks, no second kill.
    vi.advanceTimersByTime(5_000);
    expect(worker.asks).toBe(30);
    expect(errors).toHaveLength(1);
    watchdog.stop();
  });

  it("never kills a worker that answers, however late within the timeout", () => {
    const { watchdog, worker } = watchdogFor(2_000);
    for (let i = 0; i < 50; i++) {
      vi.advanceTimersByTime(1_900);
      worker.answer();
    }
    expect(worker.killed).toBeUndefined();
    // Asks every 200 ms (ten per timeout).
    expect(worker.asks).toBe(Math.floor((50 * 1_900) / 200));
    watchdog.stop();
  });

  it("stops asking a worker that exited, and everyone once stopped", () => {
    const { watchdog, worker } = watchdogFor(1_000);
    vi.advanceTimersByTime(300);
    worker.emit("exit");
    const asked = worker.asks;
    vi.advanceTimersByTime(5_000);
    expect(worker.asks).toBe(asked);
    expect(worker.killed).toBeUndefined();
    const other = new FakeWorker();
    watchdog.watch(other as unknown as Worker);
    watchdog.stop();
    vi.advanceTimersByTime(5_000);
    expect(other.asks).toBe(0);
  });
});
