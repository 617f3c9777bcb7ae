import { BoundedLru } from "./bounded-lru.js";

/** At most this many failed attempts per user name or client address within WINDOW_MS. */
export const MAX_FAILURES = 10;
export const WINDOW_MS = 60_000;

/**
 * Counts failed sign-ins per user name (or key id) and per client address. Past MAX_FAILURES in
 * the last minute, further attempts are refused without being checked, until the oldest of those
 * failures is a minute old: correct credentials work again within a minute of the failures
 * stopping. Refused attempts are not counted, so the lock-out cannot be stretched by retrying.
 * Memory is bounded: `capacity` names and addresses, least recently failed forgotten first.
 */
export class FailureLimiter {
  private readonly failures: BoundedLru<string, number[]>;

  constructor(
    capacity: number,
    private readonly now: () => number = Date.now,
  ) {
    this.failures = new BoundedLru(capacity);
  }

  /** True when any of `keys` has had MAX_FAILURES failures within the window. */
  blocked(keys: readonly string[]): boolean {
    const since = this.now() - WINDOW_MS;
    return keys.some((key) => {
      const times = this.failures.get(key);
      return times !== undefined && times.filter((t) => t > since).length >= MAX_FAILURES;
    });
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
