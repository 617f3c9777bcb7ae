import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StoreError } from "../server/store/errors.js";
import { matches } from "../server/store/matcher.js";
import type { EventToAppend, Position, Query, StoredEvent } from "../server/store/types.js";
import { NamedSubscriptions } from "../server/streaming/subscription.js";
import { collect, type LiveSetup, liveTargets } from "./support/live.js";
import { prng } from "./support/prng.js";

const TYPES = ["Opened", "Renamed", "Closed"] as const;
const ACCOUNTS = ["a1", "a2", "a3", "a4"] as const;

function event(id: string, type: string, account: string): EventToAppend {
  return {
    id,
    type,
    tags: [{ key: "account", value: account }],
    data: `{"id":"${id}"}`,
    metadata: "",
  };
}

const key = (p: Position) => `${p.commit}:${p.prepare}`;
const isAfter = (a: Position, b: Position) =>
  a.commit > b.commit || (a.commit === b.commit && a.prepare > b.prepare);

async function wholeLog(setup: LiveSetup, boundary: string): Promise<StoredEvent[]> {
  const all: StoredEvent[] = [];
  for (;;) {
    const last = all.at(-1)?.position;
    const page = await setup.store.read({
      boundary,
      query: [],
      from: last ? { commit: last.commit, prepare: last.prepare + 1n } : undefined,
      count: 10_000,
      direction: "asc",
    });
    all.push(...page);
    if (page.length < 10_000) return all;
  }
}

describe.each(liveTargets)("subscriptions on $name", (target) => {
  let setup: LiveSetup;
  beforeAll(async () => {
    setup = await target.open();
  });
  afterAll(() => setup.close());

  it("sends history after the position, then live events, in order, filtered by the query", async () => {
    const boundary = "history_then_live";
    for (let i = 0; i < 30; i++) {
      await setup.store.append({
        boundary,
        events: [event(`h${i}`, TYPES[i % 3] as string, ACCOUNTS[i % 4] as string)],
      });
    }
    const log = await wholeLog(setup, boundary);
    const from = log[9]?.position as Position;
    const query: Query = [{ types: ["Opened", "Closed"], tags: [{ key: "account", value: "a2" }] }];
    const sub = collect(setup, { boundary, query, after: from });
    for (let i = 30; i < 60; i++) {
      await setup.store.append({
        boundary,
        events: [event(`h${i}`, TYPES[i % 3] as string, ACCOUNTS[i % 4] as string)],
      });
    }
    const expected = (await wholeLog(setup, boundary)).filter(
      (e) => isAfter(e.position, from) && matches(e, query),
    );
    await sub.until((got) => got.length >= expected.length);
    sub.cancel();
    await sub.done;
    expect(sub.events.map((e) => e.id)).toEqual(expected.map((e) => e.id));
  });

  it("handover race: subscriptions started at random points while writers append receive exactly their slice of the log", async () => {
    const boundary = "handover";
    const random = prng(20261128);
    const subs: { sub: ReturnType<typeof collect>; from: Position; query: Query }[] = [];
    let running = true;
    let n = 0;
    const writer = async (w: number) => {
      while (running) {
        const size = 1 + Math.floor(random() * 3);
        const events = Array.from({ length: size }, () => {
          n++;
          return event(
            `w${w}-${n}`,
            TYPES[Math.floor(random() * 3)] as string,
            ACCOUNTS[Math.floor(random() * 4)] as string,
          );
        });
        await setup.store.append({ boundary, events });
        // PGlite answers within microtasks: let timers (and the subscriptions) run between appends.
        await new Promise((r) => setImmediate(r));
      }
    };
    const writers = Array.from({ length: 4 }, (_, w) => writer(w));
    // At least 3 s and at least 15 subscriptions: a loaded machine makes each round slower.
    const deadline = Date.now() + 3_000;
    while (Date.now() < deadline || subs.length < 15) {
      await new Promise((r) => setTimeout(r, 50 + random() * 150));
      const log = await wholeLog(setup, boundary);
      // Anywhere from the very start to the head, including just before and at it.
      const pick = log[Math.floor(random() * (log.length + 1)) - 1];
      const from = pick?.position ?? { commit: 0n, prepare: 0n };
      const query: Query =
        random() < 0.3 ? [] : [{ types: [TYPES[Math.floor(random() * 3)] as string], tags: [] }];
      subs.push({ sub: collect(setup, { boundary, query, after: from }), from, query });
    }
    running = false;
    await Promise.all(writers);
    const log = await wholeLog(setup, boundary);
    expect(subs.length).toBeGreaterThan(10);
    for (const { sub, from, query } of subs) {
      const expected = log.filter((e) => isAfter(e.position, from) && matches(e, query));
      await sub.until((got) => got.length >= expected.length);
      // Nothing more may arrive: a duplicate would show up here.
      await new Promise((r) => setTimeout(r, 50));
      sub.cancel();
      await sub.done;
      expect(sub.events.map((e) => key(e.position))).toEqual(expected.map((e) => key(e.position)));
    }
  });

  it("100 subscribers on one boundary share one feed, and cancelling frees it", async () => {
    const boundary = "fan_out";
    const subs = Array.from({ length: 100 }, (_, i) =>
      collect(setup, {
        boundary,
        query: [{ types: [], tags: [{ key: "account", value: ACCOUNTS[i % 4] as string }] }],
      }),
    );
    for (let i = 0; i < 20; i++) {
      await setup.store.append({
        boundary,
        events: [event(`f${i}`, "Opened", ACCOUNTS[i % 4] as string)],
      });
    }
    await Promise.all(subs.map((s) => s.until((got) => got.length === 5)));
    expect(setup.feeds.following.filter((b) => b === boundary)).toEqual([boundary]);
    expect(await setup.consumers(boundary)).toBeOneOf([undefined, 1]);
    for (const s of subs) s.cancel();
    await Promise.all(subs.map((s) => s.done));
    await expectSoon(() => !setup.feeds.following.includes(boundary));
    // Deleting the consumer is the feed's last, asynchronous step.
    await expectSoon(async () => (await setup.consumers(boundary)) !== 1);
    expect(await setup.consumers(boundary)).toBeOneOf([undefined, 0]);
  });

  it("a subscriber that does not read falls back to catching up and misses nothing; the others are not held up", async () => {
    const boundary = "slow";
    const limits = { pageSize: 50, bufferEvents: 20, bufferBytes: 1024 * 1024 };
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    let first = true;
    const slow = collect(
      setup,
      { boundary },
      {
        limits,
        // Stalls after its first event, as a client that stops reading would.
        onEvent: async () => {
          if (first) {
            first = false;
            await gate;
          }
        },
      },
    );
    const fast = collect(setup, { boundary }, { limits });
    for (let i = 0; i < 200; i++) {
      await setup.store.append({ boundary, events: [event(`s${i}`, "Opened", "a1")] });
    }
    await fast.until((got) => got.length === 200);
    expect(slow.events.length).toBe(1);
    release();
    await slow.until((got) => got.length === 200);
    expect(slow.events.map((e) => e.id)).toEqual(fast.events.map((e) => e.id));
    slow.cancel();
    fast.cancel();
    await Promise.all([slow.done, fast.done]);
  });

  it("a subscriber name is exclusive in its boundary until its holder goes", async () => {
    const boundary = "exclusive";
    const holder = collect(setup, { boundary, subscriberName: "projector" });
    await setup.store.append({ boundary, events: [event("x1", "Opened", "a1")] });
    await holder.until((got) => got.length === 1);
    const second = collect(setup, { boundary, subscriberName: "projector" });
    await expect(second.done).rejects.toSatisfy(
      (e) =>
        e instanceof StoreError && e.kind === "already_exists" && e.field === "subscriber_name",
    );
    // The same name in another boundary is another subscriber.
    const elsewhere = collect(setup, { boundary: "exclusive_other", subscriberName: "projector" });
    holder.cancel();
    await holder.done;
    const takeover = collect(setup, { boundary, subscriberName: "projector" });
    await takeover.until((got) => got.length === 1);
    takeover.cancel();
    elsewhere.cancel();
    await Promise.all([takeover.done, elsewhere.done]);
  });

  it("holds this process's named subscriptions to their cap; unnamed ones are not counted", async () => {
    const named = new NamedSubscriptions(2);
    const boundary = "named_cap";
    const first = collect(setup, { boundary, subscriberName: "one" }, { named });
    const second = collect(setup, { boundary, subscriberName: "two" }, { named });
    await setup.store.append({ boundary, events: [event("n1", "Opened", "a1")] });
    await Promise.all([first, second].map((c) => c.until((got) => got.length === 1)));
    const third = collect(setup, { boundary, subscriberName: "three" }, { named });
    await expect(third.done).rejects.toSatisfy(
      (e) =>
        e instanceof StoreError &&
        e.kind === "limit_reached" &&
        e.field === "subscriber_name" &&
        e.message.includes("ORISUN_MAX_NAMED_SUBSCRIPTIONS (2)"),
    );
    // A name already held is ALREADY_EXISTS, and its refusal frees the place it took.
    first.cancel();
    await first.done;
    const clash = collect(setup, { boundary, subscriberName: "two" }, { named });
    await expect(clash.done).rejects.toSatisfy(
      (e) => e instanceof StoreError && e.kind === "already_exists",
    );
    const unnamed = collect(setup, { boundary }, { named });
    const again = collect(setup, { boundary, subscriberName: "three" }, { named });
    await Promise.all([unnamed, again].map((c) => c.until((got) => got.length === 1)));
    for (const c of [second, unnamed, again]) c.cancel();
    await Promise.all([second.done, unnamed.done, again.done]);
  });
});

async function expectSoon(
  condition: () => boolean | Promise<boolean>,
  timeoutMs = 5_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}
