import { BoundedLru } from "./bounded-lru.js";

/** At most this many failed attempts per user name or client address within WINDOW_MS. */
export const MAX_FAILURES = 10;
export const WINDOW_MS = 60_000;

/**
 * Counts failed sign-ins per user name (or key id) and per client address. Past MAX_FAILURES in
 * the last minute, further attempts are refused without being checked, until the oldest of those
 * failures is a minute old: correct credentials work again within a minute of the failures
 * stopping. Refused attempts are not counted, so the lock-out cannot be stretched by retrying;
 * attempts being verified are, so that guesses sent at once cannot pass it together.
 * Memory is bounded: `capacity` names and addresses, least recently failed forgotten first.
 */
export class FailureLimiter {
  private readonly failures: BoundedLru<string, number[]>;
  /**
   * Attempts being verified, per key: they count as failures until they are decided, or N guesses
   * sent at once would all pass `blocked` before the first of them failed. An entry lives only
   * while an attempt does, so this holds at most the attempts in flight.
   */
  private readonly pending = new Map<string, number>();

  constructor(
    capacity: number,
    private readonly now: () => number = Date.now,
  ) {
    this.failures = new BoundedLru(capacity);
  }

  /**
   * True when any of `keys` has had MAX_FAILURES failures within the window, counting the attempts
   * still being verified as failures.
   */
  blocked(keys: readonly string[]): boolean {
    const since = this.now() - WINDOW_MS;
    return keys.some((key) => {
      const recent = (this.failures.get(key) ?? []).filter((t) => t > since).length;
      return recent + (this.pending.get(key) ?? 0) >= MAX_FAILURES;
    });
  }

  /**
   * Starts an attempt: undefined when `keys` are blocked, else a function to call once it is
   * decided (then `fail` too if it failed).
   */
  attempt(keys: readonly string[]): (() => void) | undefined {
    if (this.blocked(keys)) return undefined;
    for (const key of keys) this.pending.set(key, (this.pending.get(key) ?? 0) + 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      for (const key of keys) {
        const left = (this.pending.get(key) ?? 1) - 1;
        if (left > 0) this.pending.set(key, left);
        else this.pending.delete(key);
      }
    };
  }

  fail(keys: readonly string[]): void {
    const now = this.now();
    for (const key of keys) {
      const recent = (this.failures.get(key) ?? []).filter((t) => t > now - WINDOW_MS);
      recent.push(now);
      // Only the last MAX_FAILURES matter to `blocked`.
      this.failures.set(key, recent.slice(-MAX_FAILURES));
    }
  }
}
