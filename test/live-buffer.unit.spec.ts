import { describe, expect, it } from "vitest";
import type { StoredEvent } from "../server/store/types.js";
import { LiveBuffer } from "../server/streaming/subscription.js";

function event(n: number): StoredEvent {
  return {
    boundary: "b",
    id: `e${n}`,
    type: "T",
    tags: [],
    data: "{}",
    metadata: "",
    position: { commit: BigInt(n), prepare: BigInt(n) },
    createdAt: new Date(0),
  };
}

const limits = { pageSize: 10, bufferEvents: 5, bufferBytes: 1024 * 1024 };

describe("LiveBuffer", () => {
  it("hands out everything buffered as one run, in order", async () => {
    const buffer = new LiveBuffer(limits, new AbortController().signal);
    for (const n of [1, 2, 3]) buffer.push(event(n));
    expect((await buffer.next())?.map((e) => e.id)).toEqual(["e1", "e2", "e3"]);
    const waiting = buffer.next();
    buffer.push(event(4));
    expect((await waiting)?.map((e) => e.id)).toEqual(["e4"]);
  });

  it("counts the run being sent against its bounds until the next is asked for", async () => {
    const buffer = new LiveBuffer(limits, new AbortController().signal);
    for (const n of [1, 2, 3]) buffer.push(event(n));
    expect(await buffer.next()).toHaveLength(3);
    // Three being sent and two waiting: at the bound. One more is too many.
    buffer.push(event(4));
    buffer.push(event(5));
    buffer.push(event(6));
    expect(await buffer.next()).toBeUndefined();
  });

  it("lets the bound go once the run was sent", async () => {
    const buffer = new LiveBuffer(limits, new AbortController().signal);
    for (const n of [1, 2, 3]) buffer.push(event(n));
    expect(await buffer.next()).toHaveLength(3);
    const waiting = buffer.next(); // the three were sent
    for (const n of [4, 5, 6, 7, 8]) buffer.push(event(n));
    expect(await waiting).toHaveLength(5);
  });
});
