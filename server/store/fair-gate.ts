import { StoreError } from "./errors.js";

interface Waiter {
  grant(): void;
}

/**
 * A fixed number of slots handed out first come, first served. Waiting never fails by itself:
 * only the waiter's own signal (its client's cancel or deadline) takes it out of the line.
 */
export class FairGate {
  private free: number;
  private readonly waiting: Waiter[] = [];

  constructor(slots: number) {
    this.free = slots;
  }

  /** A slot is free and nobody waits for one. */
  get idle(): boolean {
    return this.free > 0 && this.waiting.length === 0;
  }

  /** Resolves to the function that gives the slot back. */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(notStarted());
    if (this.idle) {
      this.free--;
      return Promise.resolve(this.releaser());
    }
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiting.indexOf(waiter);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(notStarted());
      };
      const waiter: Waiter = {
        grant: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve(this.releaser());
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      // Handed over through the event loop, so that timers and I/O run between turns even when
      // the database answers without any I/O (PGlite): a storm of turns never starves them.
      if (next) setImmediate(() => next.grant());
      else this.free++;
    };
  }
}

function notStarted(): StoreError {
  return new StoreError(
    "deadline_exceeded",
    "the request ended (its deadline passed or it was cancelled) before its read started",
  );
}
