import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BoundaryOwners, ownerOf } from "../server/process/boundary-owners.js";
import { encodeFrame, FrameKind, FrameReader } from "../server/process/forward-wire.js";
import { socketPath } from "../server/process/worker-slots.js";
import { StoreError } from "../server/store/errors.js";
import type { EventStore } from "../server/store/event-store.js";
import type { AppendRequest, Position, Query, StoredEvent } from "../server/store/types.js";
import { dropSchema, freshSchema, openPostgresStore } from "./support/databases.js";
import { type Attempt, verifyLog } from "./support/dcb-log.js";
import { prng } from "./support/prng.js";

/** A boundary name that the worker in `slot` (of 2) owns. */
function ownedBy(slot: number, prefix: string): string {
  for (let i = 0; ; i++) if (ownerOf(`${prefix}${i}`, 2) === slot) return `${prefix}${i}`;
}

const event = (id: string, tags: { key: string; value: string }[] = []) => ({
  id,
  type: "T",
  tags,
  data: `{"id":"${id}"}`,
  metadata: "",
});

async function readAll(store: EventStore, boundary: string): Promise<StoredEvent[]> {
  return store.read({ boundary, query: [], count: 100_000, direction: "asc" });
}

async function expectRejected(promise: Promise<unknown>): Promise<StoreError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(StoreError);
  return error as StoreError;
}

describe("appends routed to the worker that owns their boundary", () => {
  const schema = freshSchema("owners");
  const dir = mkdtempSync(join(tmpdir(), "orisun-owners-test-"));
  const log = { warn: () => {} };
  let a: EventStore;
  let b: EventStore;
  let ownersA: BoundaryOwners;
  let ownersB: BoundaryOwners;
  const start = (store: EventStore, slot: number) =>
    BoundaryOwners.start({
      slots: { slot, slots: 2, dir },
      store,
      log,
      maxFrameBytes: 16 * 1024 * 1024,
      retryMs: 200,
    });

  beforeAll(async () => {
    a = await openPostgresStore(schema);
    b = await openPostgresStore(schema);
    ownersA = await start(a, 0);
    ownersB = await start(b, 1);
  });
  afterAll(async () => {
    await ownersA?.close();
    await ownersB?.close();
    await a?.close();
    await b?.close();
    await dropSchema(schema);
    rmSync(dir, { recursive: true, force: true });
  });

  it("an append reaching the other worker is committed by the owner, and answered with its position", async () => {
    const theirs = ownedBy(1, "theirs");
    const mine = ownedBy(0, "mine");
    const before = { ...ownersA.counts };
    const served = ownersB.counts.served;
    const at = await a.append({ boundary: theirs, events: [event("x1"), event("x2")] });
    expect(at).toEqual({ commit: 1n, prepare: 2n });
    expect(ownersA.counts.forwarded).toBe(before.forwarded + 1);
    expect(ownersB.counts.served).toBe(served + 1);
    await a.append({ boundary: mine, events: [event("m1")] });
    expect(ownersA.counts.forwarded).toBe(before.forwarded + 1);
    expect((await readAll(b, theirs)).map((e) => e.id)).toEqual(["x1", "x2"]);
    // The owner's own appends stay with it.
    await b.append({ boundary: theirs, events: [event("x3")] });
    expect(ownersB.counts.forwarded).toBe(0);
  });

  it("a forwarded append's error keeps its kind, field, message and metadata", async () => {
    const boundary = ownedBy(1, "conflict");
    const tags = [{ key: "user", value: "ada" }];
    const query: Query = [{ types: [], tags }];
    await a.append({ boundary, events: [event("first", tags)] });
    const refused = await expectRejected(
      a.append({
        boundary,
        events: [event("second", tags)],
        condition: { after: { commit: 0n, prepare: 0n }, query },
      }),
    );
    expect(refused.kind).toBe("condition_failed");
    expect(refused.field).toBe("consistency_condition");
    expect(refused.metadata).toMatchObject({ boundary, marker_commit_position: "0" });
    // An exact retry of a stored append answers its original position, through the owner too.
    const first = await a.append({ boundary, events: [event("again")] });
    expect(await a.append({ boundary, events: [event("again")] })).toEqual(first);
    const taken = await expectRejected(
      a.append({ boundary, events: [event("again"), event("new")] }),
    );
    expect([taken.kind, taken.field]).toEqual(["already_exists", "events.event_id"]);
    expect((await readAll(a, boundary)).map((e) => e.id)).toEqual(["first", "again"]);
  });

  it("16 writers through both workers: every condition held, and every append to a boundary met in its owner", async () => {
    const boundaries = [ownedBy(0, "hot"), ownedBy(1, "hot")];
    const attempts = new Map<string, Attempt[]>(boundaries.map((name) => [name, []]));
    const forwarded = ownersA.counts.forwarded + ownersB.counts.forwarded;
    let sentToOther = 0;
    await Promise.all(
      Array.from({ length: 16 }, async (_, writer) => {
        const random = prng(900 + writer);
        const through = writer % 2 === 0 ? a : b;
        const slot = writer % 2;
        for (let n = 0; n < 25; n++) {
          const boundary = boundaries[Math.floor(random() * 2)] as string;
          if (ownerOf(boundary, 2) !== slot) sentToOther++;
          const tag = { key: "k", value: `v${Math.floor(random() * 4)}` };
          const query: Query = [{ types: [], tags: [tag] }];
          const [last] = await through.read({ boundary, query, count: 1, direction: "desc" });
          const after: Position = last?.position ?? { commit: 0n, prepare: 0n };
          const request: AppendRequest = {
            boundary,
            events: [event(`w${writer}-${n}`, [tag])],
            condition: { after, query },
          };
          const attempt: Attempt = { request };
          attempts.get(boundary)?.push(attempt);
          try {
            attempt.result = await through.append(request);
          } catch (error) {
            if (!(error instanceof StoreError) || error.kind !== "condition_failed") throw error;
            attempt.error = error;
          }
        }
      }),
    );
    for (const boundary of boundaries) {
      const tried = attempts.get(boundary) ?? [];
      expect(tried.filter((t) => t.result).length).toBeGreaterThan(5);
      verifyLog(await readAll(a, boundary), tried);
    }
    expect(ownersA.counts.forwarded + ownersB.counts.forwarded - forwarded).toBe(sentToOther);
    expect(ownersA.counts.fellBack + ownersB.counts.fellBack).toBe(0);
  });

  it("a caller that gives up while the owner is busy gets deadline_exceeded, and nothing half-done", async () => {
    const boundary = ownedBy(1, "slow");
    // A large append holds the boundary's transaction, so the next one waits in the owner's queue.
    const big = a.append({
      boundary,
      events: Array.from({ length: 5_000 }, (_, i) => event(`big${i}`)),
    });
    const signal = AbortSignal.abort(new Error("client gone"));
    const late = new AbortController();
    const waiting = a.append({ boundary, events: [event("late")] }, { signal: late.signal });
    late.abort();
    expect(
      (await expectRejected(a.append({ boundary, events: [event("never")] }, { signal }))).kind,
    ).toBe("deadline_exceeded");
    const outcome = await waiting.then(
      (p) => p,
      (e: unknown) => e,
    );
    await big;
    const ids = new Set((await readAll(a, boundary)).map((e) => e.id));
    expect(ids.has("never")).toBe(false);
    if (outcome instanceof StoreError) {
      expect(outcome.kind).toBe("deadline_exceeded");
      // "before the append started" means it is not stored; otherwise it may be.
      if (outcome.message.includes("nothing was written")) expect(ids.has("late")).toBe(false);
    } else expect(ids.has("late")).toBe(true);
  });

  it("a stopping owner answers what it was sent; then its boundaries commit where they arrive, and again at the owner once it is back", async () => {
    const boundary = ownedBy(1, "restart");
    const inFlight = Array.from({ length: 20 }, (_, i) =>
      a.append({ boundary, events: [event(`before${i}`)] }),
    );
    await new Promise((r) => setImmediate(r));
    await ownersB.close();
    // Everything sent before the GOODBYE was committed and answered.
    const positions = await Promise.all(inFlight);
    expect(new Set(positions.map((p) => p.commit)).size).toBeGreaterThan(0);
    const fellBack = ownersA.counts.fellBack;
    await a.append({ boundary, events: [event("while-away")] });
    expect(ownersA.counts.fellBack).toBe(fellBack + 1);
    // A new owner takes the slot; after retryMs the other worker forwards to it again.
    ownersB = await start(b, 1);
    await new Promise((r) => setTimeout(r, 250));
    const forwarded = ownersA.counts.forwarded;
    await a.append({ boundary, events: [event("back")] });
    expect(ownersA.counts.forwarded).toBe(forwarded + 1);
    const ids = (await readAll(a, boundary)).map((e) => e.id);
    expect(ids).toHaveLength(22);
    expect(ids.slice(-2)).toEqual(["while-away", "back"]);
  });

  it("an owner that answers nothing: after silentMs, appends commit where they arrive, until it is heard again", async () => {
    const silentDir = mkdtempSync(join(tmpdir(), "orisun-owners-silent-"));
    const c = await openPostgresStore(schema);
    const warnings: object[] = [];
    // The owner's slot: accepts and reads, as a worker whose event loop stopped would (the kernel
    // still accepts), and answers nothing until told to, then every append frame with a position.
    let answering = false;
    const pending: { socket: Socket; id: number }[] = [];
    const answer = (socket: Socket, id: number) =>
      socket.write(
        encodeFrame({ kind: FrameKind.ok, id, position: { commit: 99n, prepare: 99n } }),
      );
    const owner = createServer((socket) => {
      const reader = new FrameReader(1024 * 1024);
      socket.on("data", (chunk: Buffer) => {
        for (const frame of reader.push(chunk)) {
          if (frame.kind !== FrameKind.append) continue;
          if (answering) answer(socket, frame.id);
          else pending.push({ socket, id: frame.id });
        }
      });
    });
    await new Promise<void>((r) => owner.listen(socketPath(silentDir, 1), r));
    const ownersC = await BoundaryOwners.start({
      slots: { slot: 0, slots: 2, dir: silentDir },
      store: c,
      log: { warn: (fields) => warnings.push(fields) },
      maxFrameBytes: 1024 * 1024,
      retryMs: 100,
      abandonMs: 100,
      silentMs: 600,
    });
    try {
      const boundary = ownedBy(1, "silent");
      // Sent to the owner, which never answers: the caller's deadline ends it.
      const first = await expectRejected(
        c.append({ boundary, events: [event("s1")] }, { signal: AbortSignal.timeout(200) }),
      );
      expect(first.kind).toBe("deadline_exceeded");
      expect(ownersC.counts).toMatchObject({ forwarded: 1, fellBack: 0 });
      // Still within silentMs of the send: sent to the owner again.
      await expectRejected(
        c.append({ boundary, events: [event("s2")] }, { signal: AbortSignal.timeout(50) }),
      );
      expect(ownersC.counts).toMatchObject({ forwarded: 2, fellBack: 0 });
      await new Promise((r) => setTimeout(r, 300));
      // Silent for over silentMs: committed here, at once, and so for as long as it is silent.
      for (const id of ["s3", "s4", "s5"]) await c.append({ boundary, events: [event(id)] });
      await new Promise((r) => setTimeout(r, 150));
      await c.append({ boundary, events: [event("s6")] });
      expect(ownersC.counts).toMatchObject({ forwarded: 2, fellBack: 4 });
      expect((await readAll(c, boundary)).map((e) => e.id)).toEqual(["s3", "s4", "s5", "s6"]);
      expect(warnings).toEqual([expect.objectContaining({ worker: 1 })]);
      // Heard again (it answers what it was sent): after retryMs, appends go to it once more.
      answering = true;
      for (const { socket, id } of pending.splice(0)) answer(socket, id);
      await new Promise((r) => setTimeout(r, 150));
      expect(await c.append({ boundary, events: [event("s7")] })).toEqual({
        commit: 99n,
        prepare: 99n,
      });
      expect(ownersC.counts).toMatchObject({ forwarded: 3, fellBack: 4 });
    } finally {
      await ownersC.close();
      await c.close();
      owner.close();
      rmSync(silentDir, { recursive: true, force: true });
    }
  });

  it("with no worker listening in the owner's slot, appends commit where they arrive", async () => {
    const lonely = mkdtempSync(join(tmpdir(), "orisun-owners-alone-"));
    const c = await openPostgresStore(schema);
    const ownersC = await BoundaryOwners.start({
      slots: { slot: 0, slots: 2, dir: lonely },
      store: c,
      log,
      maxFrameBytes: 1024 * 1024,
    });
    try {
      const boundary = ownedBy(1, "nobody");
      await c.append({ boundary, events: [event("n1")] });
      await c.append({ boundary, events: [event("n2")] });
      expect(ownersC.counts).toEqual({ forwarded: 0, served: 0, fellBack: 2 });
      expect((await readAll(c, boundary)).map((e) => e.id)).toEqual(["n1", "n2"]);
    } finally {
      await ownersC.close();
      await c.close();
      rmSync(lonely, { recursive: true, force: true });
    }
  });
});
