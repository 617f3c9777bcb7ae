import { describe, expect, it } from "vitest";
import { Waker } from "../server/broker/waker.js";

describe("Waker", () => {
  it("wakes a waiter on the next turn of the event loop, not inside wake()", async () => {
    const waker = new Waker();
    const order: string[] = [];
    const waited = waker.wait(10_000, new AbortController().signal).then((woken) => {
      order.push(`woken ${woken}`);
    });
    await Promise.resolve();
    waker.wake(false);
    // What the caller of wake() chains on promises runs before the waiter does.
    await Promise.resolve().then(() => order.push("caller's microtasks"));
    expect(order).toEqual(["caller's microtasks"]);
    await waited;
    expect(order).toEqual(["caller's microtasks", "woken true"]);
  });

  it("keeps a wake that came while nobody waited, and one wake per turn is enough", async () => {
    const waker = new Waker();
    waker.wake(true);
    waker.wake(false);
    expect(await waker.wait(10_000, new AbortController().signal)).toBe(true);
    expect(waker.takeExternal()).toBe(true);
    expect(waker.takeExternal()).toBe(false);
  });

  it("does not end a later wait early for a wake an earlier one already took", async () => {
    const waker = new Waker();
    const first = waker.wait(30, new AbortController().signal);
    await Promise.resolve();
    waker.wake(false);
    expect(waker.take()).toBe(true); // taken before the scheduled wake-up runs
    const started = performance.now();
    const second = waker.wait(50, new AbortController().signal);
    expect(await second).toBe(false);
    expect(performance.now() - started).toBeGreaterThanOrEqual(45);
    expect(await first).toBe(false);
  });

  it("ends a wait at its timeout or abort without a wake", async () => {
    const waker = new Waker();
    expect(await waker.wait(20, new AbortController().signal)).toBe(false);
    const abort = new AbortController();
    const waiting = waker.wait(10_000, abort.signal);
    abort.abort();
    expect(await waiting).toBe(false);
  });
});
