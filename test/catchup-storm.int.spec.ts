import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { EventToAppend } from "../server/store/types.js";
import { subscribe } from "../server/streaming/subscription.js";
import { type LiveSetup, liveTargets } from "./support/live.js";

const EVENTS = 3_000;
const SUBSCRIBERS = 200;
/** The server's page size for catch-up reads. */
const LIMITS = { pageSize: 1_000, bufferEvents: 10_000, bufferBytes: 32 * 1024 * 1024 };

const event = (id: string): EventToAppend => ({
  id,
  type: "Thing",
  tags: [{ key: "n", value: id }],
  data: `{"id":"${id}"}`,
  metadata: "",
});

/** Follows `boundary` from the start until it has `EVENTS` events, checking each against the log. */
async function catchUp(setup: LiveSetup, boundary: string, signal: AbortSignal): Promise<number> {
  let n = 0;
  const stream = subscribe(
    { store: setup.store, feeds: setup.feeds, limits: LIMITS },
    { boundary, query: [], after: { commit: 0n, prepare: 0n }, subscriberName: "" },
    signal,
  );
  for await (const e of stream) {
    if (e.id !== `e${n}`) throw new Error(`event ${n} is ${e.id}`);
    n++;
    if (n === EVENTS) break;
  }
  return n;
}

describe.each(liveTargets.slice(0, 2))("a catch-up storm on $name", (target) => {
  let setup: LiveSetup;
  beforeAll(async () => {
    setup = await target.open();
    for (let c = 0; c < EVENTS / 100; c++) {
      const events = Array.from({ length: 100 }, (_, i) => event(`e${c * 100 + i}`));
      await setup.store.append({ boundary: "storm", events });
    }
  });
  afterAll(() => setup.close());

  it("leaves appends and reads of other clients their share, and every subscriber gets the log", async () => {
    let probes = 0;
    const probe = async () => {
      const started = performance.now();
      const id = `p${probes++}`;
      await setup.store.append({ boundary: "other", events: [event(id)] });
      await setup.store.read({ boundary: "other", query: [], count: 10, direction: "desc" });
      return performance.now() - started;
    };
    for (let i = 0; i < 5; i++) await probe();

    const abort = new AbortController();
    const started = performance.now();
    const subscribers = Array.from({ length: SUBSCRIBERS }, () =>
      catchUp(setup, "storm", abort.signal).then(
        (n) => ({ n, error: undefined }),
        (error: unknown) => ({ n: 0, error: String(error) }),
      ),
    );
    let settled = false;
    const all = Promise.all(subscribers).finally(() => {
      settled = true;
    });
    const during: number[] = [];
    // Another client appends and reads while the subscribers catch up.
    await new Promise((r) => setTimeout(r, 50));
    while (!settled && during.length < 1_000) {
      during.push(await probe());
      await new Promise((r) => setTimeout(r, 20));
    }
    const results = await all;
    const stormMs = performance.now() - started;
    abort.abort();

    const failures = results.filter((r) => r.error !== undefined);
    expect(failures.slice(0, 3), `${failures.length} of ${SUBSCRIBERS} failed`).toEqual([]);
    expect(results.every((r) => r.n === EVENTS)).toBe(true);
    const worst = Math.max(...during);
    console.log(
      `${target.name}: storm ${Math.round(stormMs)} ms, ${during.length} probes, worst ${Math.round(worst)} ms`,
    );
    expect(during.length).toBeGreaterThan(0);
    // Waiting behind the whole storm would take a good part of it; a fair share takes a few reads.
    expect(worst).toBeLessThan(stormMs / 5);
  }, 180_000);
});
