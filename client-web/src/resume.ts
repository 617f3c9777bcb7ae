import { Code, ConnectError } from "@connectrpc/connect";
import { isTransient } from "./errors.js";

/** Where a long-lived stream is; `attempt` counts consecutive failures. */
export type StreamState =
  | { readonly state: "connecting"; readonly attempt: number }
  | { readonly state: "live" }
  | {
      readonly state: "reconnecting";
      readonly error: ConnectError;
      readonly delayMs: number;
      readonly attempt: number;
    }
  | { readonly state: "closed"; readonly error?: ConnectError };

export interface ResumeOptions {
  /** Ends the stream: the iteration returns quietly. */
  readonly signal?: AbortSignal;
  readonly onState?: (state: StreamState) => void;
  /** Delay before the n-th retry: min(maxMs, initialMs × 2^(n-1)), jittered down by up to half. */
  readonly backoff?: { readonly initialMs?: number; readonly maxMs?: number };
  /** Give up (throw) after this many consecutive failures; default: never. */
  readonly maxAttempts?: number;
}

interface Attempt<T> {
  /** Opens the stream; called again after each failure, so it reads the resume point then. */
  open(signal: AbortSignal): AsyncIterable<T>;
  /**
   * Resolves once the server answered a cheap call after the stream was opened. Connect sends a
   * stream's headers with its first message, so a quiet stream is "live" only by this probe.
   */
  probe(signal: AbortSignal): Promise<unknown>;
  /** Whether an error is worth retrying, given whether the stream was ever live; undefined: the default rule. */
  retryable?(error: ConnectError, wasLive: boolean): boolean | undefined;
}

/** Runs a server stream forever: reopens it after transient failures, with backoff. */
export async function* resumable<T>(attempt: Attempt<T>, options: ResumeOptions = {}) {
  const outer = new AbortController();
  const stop = () => outer.abort();
  options.signal?.addEventListener("abort", stop, { once: true });
  if (options.signal?.aborted) stop();
  const initialMs = options.backoff?.initialMs ?? 250;
  const maxMs = options.backoff?.maxMs ?? 10_000;
  const emit = (state: StreamState) => options.onState?.(state);
  let failures = 0;
  let everLive = false;
  let closedWith: ConnectError | undefined;
  try {
    while (!outer.signal.aborted) {
      emit({ state: "connecting", attempt: failures });
      const call = new AbortController();
      const endCall = () => call.abort();
      outer.signal.addEventListener("abort", endCall, { once: true });
      let live = false;
      const markLive = () => {
        if (live || call.signal.aborted) return;
        live = true;
        everLive = true;
        failures = 0;
        emit({ state: "live" });
      };
      let error: ConnectError;
      try {
        const stream = attempt.open(call.signal);
        attempt.probe(call.signal).then(markLive, () => {});
        for await (const item of stream) {
          markLive();
          yield item;
        }
        error = new ConnectError("the server ended the stream", Code.Unavailable);
      } catch (thrown) {
        if (outer.signal.aborted) return;
        error = ConnectError.from(thrown);
      } finally {
        outer.signal.removeEventListener("abort", endCall);
        call.abort();
      }
      const retry = attempt.retryable?.(error, everLive) ?? isTransient(error);
      failures++;
      if (!retry || failures >= (options.maxAttempts ?? Number.POSITIVE_INFINITY)) {
        closedWith = error;
        throw error;
      }
      const delayMs = Math.round(
        Math.min(maxMs, initialMs * 2 ** (failures - 1)) * (0.5 + Math.random() / 2),
      );
      emit({ state: "reconnecting", error, delayMs, attempt: failures });
      if (!(await sleep(delayMs, outer.signal))) return;
    }
  } finally {
    options.signal?.removeEventListener("abort", stop);
    outer.abort();
    emit(closedWith ? { state: "closed", error: closedWith } : { state: "closed" });
  }
}

/** Resolves true after `ms`, or false as soon as `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  return new Promise((done) => {
    if (signal.aborted) return done(false);
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", abort);
      done(true);
    }, ms);
    const abort = () => {
      clearTimeout(timer);
      done(false);
    };
    signal.addEventListener("abort", abort, { once: true });
  });
}
