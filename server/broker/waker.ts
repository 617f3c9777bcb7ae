/**
 * A wake-up that is not lost when it comes while nobody waits: how a boundary's publisher learns
 * of commits.
 *
 * The waiter runs on the next turn of the event loop, not inside `wake`. A commit wakes its
 * boundary's publisher from the same callback that settles the commit's appends, and run at
 * once, the publisher's short chain of promises took the event loop first: the JetStream publish
 * went out before the clients' answers, which waited for it. Woken a turn later, it lets the
 * answers go first. In alternating runs a lone client's appends went from 116 to 133 and from
 * 165 to 182 per second (10 of 12 pairs faster), with 8–13% less server CPU per append; 16
 * clients' and live delivery stayed within the noise.
 */
export class Waker {
  private pending = false;
  private external = false;
  private waiting: (() => void) | undefined;
  private scheduled = false;
  /** When the last wake came (Date.now()); 0 while none came (the sweep took the boundary up). */
  last = 0;

  /** `external`: for a commit whose events were not handed over (another process's, or unknown). */
  wake(external: boolean): void {
    this.pending = true;
    this.external ||= external;
    this.last = Date.now();
    if (this.waiting === undefined || this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      // A wait that began since found the wake pending and took it: it must not end early.
      if (this.pending) this.waiting?.();
    });
  }

  /** Whether an external wake came since the last call. */
  takeExternal(): boolean {
    const external = this.external;
    this.external = false;
    return external;
  }

  /** Whether a wake came since the last wait or take; either way, none is pending after. */
  take(): boolean {
    const pending = this.pending;
    this.pending = false;
    return pending;
  }

  /** On a wake (also one since the last wait): true; after `ms` or on abort: false. */
  async wait(ms: number, signal: AbortSignal): Promise<boolean> {
    if (this.take()) return true;
    await pause(ms, signal, (done) => {
      this.waiting = done;
    });
    this.waiting = undefined;
    return this.take();
  }
}

/** Resolves after `ms` or on abort, whichever is first; `early` receives a way to end it sooner. */
export function pause(
  ms: number,
  signal: AbortSignal,
  early?: (done: () => void) => void,
): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    early?.(done);
  });
}
