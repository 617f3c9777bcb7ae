import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { EventToAppend } from "../server/store/types.js";
import { subscribe } from "../server/streaming/subscription.js";
import { type LiveSetup, liveTargets } from "./support/live.js";

/** Events and catch-up subscribers: PGlite (the first target) reads about five times slower. */
const POSTGRES_SIZE = { events: 3_000, subscribers: 200 };
const PGLITE_SIZE = { events: 2_000, subscribers: 100 };
/** The server's page size for catch-up reads. */
const LIMITS = { pageSize: 1_000, bufferEvents: 10_000, bufferBytes: 32 * 1024 * 1024 };

const event = (id: string): EventToAppend => ({
  id,
  type: "Thing",
  tags: [{ key: "n", value: id }],
  data: `{"id":"${id}"}`,
  metadata: "",
});

/** Follows `boundary` from the start until it has `events` events, checking each against the log. */
async function catchUp(
  setup: LiveSetup,
  boundary: string,
  events: number,
  signal: AbortSignal,
): Promise<number> {
  let n = 0;
  const stream = subscribe(
    { store: setup.store, feeds: setup.feeds, limits: LIMITS },
    { boundary, query: [], after: { commit: 0n, prepare: 0n }, subscriberName: "" },
    signal,
  );
  for await (const run of stream) {
    for (const e of run) {
      if (e.id !== `e${n}`) throw new Error(`event ${n} is ${e.id}`);
      n++;
      if (n === events) return n;
    }
  }
  return n;
}

describe.each(
  liveTargets
    .slice(0, 2)
    .map((target, i) => ({ ...target, ...(i === 0 ? PGLITE_SIZE : POSTGRES_SIZE) })),
)("a catch-up storm on $name", (target) => {
  const { events: EVENTS, subscribers: SUBSCRIBERS } = target;
  let setup: LiveSetup;
  beforeAll(async () => {
    setup = await target.open();
    for (let c = 0; c < EVENTS / 100; c++) {
      const events = Array.from({ length: 100 }, (_, i) => event(`e${c * 100 + i}`));
      await setup.store.append({ boundary: "storm", events });
    }
  }, 180_000);
  afterAll(() => setup.close());

  it("leaves appends and reads of other clients their share, and every subscriber gets the log", async () => {
    let probes = 0;
    const probe = async () => {
      const id = `p${probes++}`;
      await setup.store.append({ boundary: "other", events: [event(id)] });
      await setup.store.read({ boundary: "other", query: [], count: 10, direction: "desc" });
    };
    for (let i = 0; i < 5; i++) await probe();

    const abort = new AbortController();
    const started = performance.now();
    const subscribers = Array.from({ length: SUBSCRIBERS }, () =>
      catchUp(setup, "storm", EVENTS, abort.signal).then(
        (n) => ({ n, error: undefined }),
        (error: unknown) => ({ n: 0, error: String(error) }),
      ),
    );
    let settled = false;
    const all = Promise.all(subscribers).finally(() => {
      settled = true;
    });
    // Another client appends and reads, pausing 20 ms between calls, while the subscribers catch
    // up. What it sees is the time from one answer to the next: that covers both a call queued
    // behind the storm and a process too busy with the storm to run the client's next call.
    const waits: number[] = [];
    const probeErrors: string[] = [];
    let answered = performance.now();
    while (!settled && waits.length + probeErrors.length < 1_000) {
      await probe().then(
        () => {},
        (error: unknown) => probeErrors.push(String(error)),
      );
      waits.push(performance.now() - answered);
      answered = performance.now();
      await new Promise((r) => setTimeout(r, 20));
    }
    const results = await all;
    waits.push(performance.now() - answered);
    const stormMs = performance.now() - started;
    abort.abort();

    const failures = results.filter((r) => r.error !== undefined);
    const longest = Math.max(...waits);
    console.log(
      `${target.name}: storm ${Math.round(stormMs)} ms, ${failures.length} subscribers and ${probeErrors.length} of ${waits.length - 1} calls failed, longest wait for an answer ${Math.round(longest)} ms`,
    );
    expect(failures.slice(0, 3), `${failures.length} of ${SUBSCRIBERS} failed`).toEqual([]);
    expect(results.every((r) => r.n === EVENTS)).toBe(true);
    expect(probeErrors.slice(0, 3), `${probeErrors.length} calls failed`).toEqual([]);
    // Waiting behind the whole storm takes a good part of it; a fair share, a few page reads.
    expect(longest).toBeLessThan(stormMs / 5);
  }, 180_000);
});
