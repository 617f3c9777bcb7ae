/** Stream helpers for end-to-end tests that watch subscriptions in the background. */

/** Collects a stream's items in the background until stopped. */
export function collect<T>(open: (signal: AbortSignal) => AsyncIterable<T>) {
  const abort = new AbortController();
  const got: T[] = [];
  const done = (async () => {
    try {
      for await (const item of open(abort.signal)) got.push(item);
    } catch (error) {
      if (!abort.signal.aborted) throw error;
    }
  })();
  return {
    got,
    async stop() {
      abort.abort();
      await done;
    },
  };
}
