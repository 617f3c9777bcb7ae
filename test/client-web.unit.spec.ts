import { existsSync, readFileSync } from "node:fs";
import { type AddressInfo, createServer, type Socket } from "node:net";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CONDITION_FAILED_REASON,
  Code,
  ConnectError,
  codeName,
  comparePositions,
  conditionFailure,
  createOrisunClient,
  ERROR_DOMAIN,
  ErrorInfoSchema,
  EventStore,
  isConditionFailed,
  nextPosition,
  type OrisunClient,
  PositionSchema,
  QuerySchema,
  type StreamState,
  toCondition,
  toEventToSave,
  toPosition,
  toQuery,
  toTags,
} from "../client-web/src/index.js";
import { resumable } from "../client-web/src/resume.js";
import { dropSchema, freshSchema, PG_URL } from "./support/databases.js";
import { type SpawnedServer, spawnServer } from "./support/spawn-server.js";

const pos = (c: number, p: number) =>
  create(PositionSchema, { commitPosition: BigInt(c), preparePosition: BigInt(p) });

describe("client helpers", () => {
  it("builds a query from plain objects, one criterion or several", () => {
    const q = toQuery({ types: ["UserRegistered"], tags: { user_id: "u-1", tenant: "t" } });
    expect(q.criteria).toHaveLength(1);
    expect(q.criteria[0]?.eventTypes).toEqual(["UserRegistered"]);
    expect(q.criteria[0]?.tags.map((t) => [t.key, t.value])).toEqual([
      ["user_id", "u-1"],
      ["tenant", "t"],
    ]);
    const any = toQuery([
      { types: ["A"] },
      {
        tags: [
          { key: "k", value: "1" },
          { key: "k", value: "2" },
        ],
      },
    ]);
    expect(any.criteria.map((c) => c.eventTypes)).toEqual([["A"], []]);
    expect(any.criteria[1]?.tags.map((t) => t.value)).toEqual(["1", "2"]);
    // Empty criteria match everything; they are left out so the query says so.
    expect(toQuery({}).criteria).toEqual([]);
    expect(toQuery([{ types: [] }, { tags: {} }]).criteria).toEqual([]);
    expect(toQuery(undefined).criteria).toEqual([]);
    const message = create(QuerySchema, { criteria: [] });
    expect(toQuery(message)).toBe(message);
  });

  it("rejects tag values that are not strings, naming the tag", () => {
    expect(() => toTags({ n: 1 as unknown as string })).toThrow(
      "tags[0] (n): value must be a string, got number",
    );
  });

  it("serializes event data and metadata as JSON, naming the field that cannot be", () => {
    const e = toEventToSave({ id: "e1", type: "T", tags: { a: "b" }, data: { x: [1, "y"] } });
    expect([e.eventId, e.eventType, e.data, e.metadata]).toEqual(["e1", "T", '{"x":[1,"y"]}', ""]);
    expect(toEventToSave({ type: "T", data: "text", metadata: { by: "me" } }).metadata).toBe(
      '{"by":"me"}',
    );
    expect(() => toEventToSave({ type: "T", data: undefined }, 3)).toThrow(
      "events[3].data: must be a JSON value, got undefined",
    );
    expect(() => toEventToSave({ type: "T", data: {}, metadata: { n: 1n } })).toThrow(
      /^events\[0\]\.metadata: not serializable as JSON/,
    );
  });

  it("builds conditions and positions, and orders positions as the log does", () => {
    const c = toCondition({ types: ["A"] }, { commitPosition: "12", preparePosition: 40 });
    expect(c.criteria?.criteria[0]?.eventTypes).toEqual(["A"]);
    expect(c.consistencyMarker).toEqual(pos(12, 40));
    expect(toCondition({ types: ["A"] }, undefined).consistencyMarker).toBeUndefined();
    expect(() => toPosition({ commitPosition: -1, preparePosition: 0 })).toThrow(
      "commitPosition: must be a non-negative integer, got -1",
    );
    expect(() => toPosition({ commitPosition: 1, preparePosition: "x" })).toThrow(
      "preparePosition: must be a non-negative integer, got x",
    );
    expect(comparePositions(pos(1, 9), pos(2, 3))).toBe(-1);
    expect(comparePositions(pos(2, 3), pos(2, 3))).toBe(0);
    expect(comparePositions(pos(2, 4), pos(2, 3))).toBe(1);
    expect(nextPosition(pos(2, 3), "forward")).toEqual(pos(2, 4));
    expect(nextPosition(pos(2, 3), "backward")).toEqual(pos(2, 2));
    expect(nextPosition(pos(0, 0), "backward")).toBeUndefined();
  });

  it("names codes as gRPC does and tells a failed condition from other errors", () => {
    expect(codeName(Code.Aborted)).toBe("ABORTED");
    expect(codeName(Code.InvalidArgument)).toBe("INVALID_ARGUMENT");
    expect(codeName(Code.ResourceExhausted)).toBe("RESOURCE_EXHAUSTED");
    const info = {
      reason: CONDITION_FAILED_REASON,
      domain: ERROR_DOMAIN,
      metadata: { boundary: "b" },
    };
    const refused = new ConnectError("condition failed", Code.Aborted, undefined, [
      { desc: ErrorInfoSchema, value: info },
    ]);
    expect(isConditionFailed(refused)).toBe(true);
    expect(conditionFailure(refused)?.metadata).toEqual({ boundary: "b" });
    // As a client receives it: details travel as bytes and are decoded on demand.
    const received = new ConnectError("condition failed", Code.Aborted);
    received.details.push({
      type: "google.rpc.ErrorInfo",
      value: toBinary(ErrorInfoSchema, create(ErrorInfoSchema, info)),
    });
    expect(isConditionFailed(received)).toBe(true);
    // ABORTED without the detail (a reset connection) or with another reason: outcome unknown.
    expect(isConditionFailed(new ConnectError("condition failed", Code.Aborted))).toBe(false);
    const other = new ConnectError("x", Code.Aborted, undefined, [
      { desc: ErrorInfoSchema, value: { ...info, reason: "SOMETHING_ELSE" } },
    ]);
    expect(isConditionFailed(other)).toBe(false);
    expect(isConditionFailed(new ConnectError("bad", Code.InvalidArgument))).toBe(false);
    expect(isConditionFailed(new Error("aborted"))).toBe(false);
  });

  it("a connection reset seen by the Node Connect client is not a failed condition", async () => {
    // Reads the request, then resets the connection: the append's outcome is unknown.
    const sockets = new Set<Socket>();
    const resetter = createServer((socket) => {
      sockets.add(socket);
      socket.on("error", () => {});
      socket.once("data", () => socket.resetAndDestroy());
    });
    await new Promise<void>((ok) => resetter.listen(0, "127.0.0.1", ok));
    try {
      const { port } = resetter.address() as AddressInfo;
      const client = createClient(
        EventStore,
        createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "1.1" }),
      );
      const error = await client.saveEvents({ boundary: "b", events: [] }).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      // The same code as a refused condition, which is why the code alone cannot decide.
      expect(error && Code[error.code]).toBe(Code[Code.Aborted]);
      expect(isConditionFailed(error)).toBe(false);
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise((done) => resetter.close(done));
    }
  });
});

describe("the @orisun/client-web package (client-web/package.json)", () => {
  it("exports the client, the helpers and the generated types from its built entry", async () => {
    const manifest = JSON.parse(readFileSync("client-web/package.json", "utf8"));
    const entry = manifest.exports["."];
    expect(existsSync(join("client-web", entry.types))).toBe(true);
    const lib = await import(`../client-web/${entry.default.replace(/^\.\//, "")}`);
    for (const name of [
      "createOrisunClient",
      "toQuery",
      "isConditionFailed",
      "Code",
      "EventStore",
      "EventSchema",
    ])
      expect(lib[name], name).toBeDefined();
  });
});

describe("resumable streams", () => {
  const unavailable = () => new ConnectError("gone", Code.Unavailable);
  /** A stream per attempt: its items, then the error it ends with (none: stays open until aborted). */
  function script(attempts: Array<{ items: number[]; error?: ConnectError }>) {
    let n = 0;
    return {
      opened: () => n,
      open: (signal: AbortSignal) =>
        (async function* () {
          const attempt = attempts[n++] ?? { items: [] };
          for (const item of attempt.items) yield item;
          if (attempt.error) throw attempt.error;
          if (!signal.aborted)
            await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
          throw new ConnectError("aborted", Code.Canceled);
        })(),
      probe: () => new Promise<void>(() => {}),
    };
  }

  it("reopens after transient failures, reports each state, and ends quietly on abort", async () => {
    const s = script([
      { items: [1, 2], error: unavailable() },
      { items: [], error: unavailable() },
      { items: [3] },
    ]);
    const states: StreamState[] = [];
    const control = new AbortController();
    const got: number[] = [];
    for await (const item of resumable(s, {
      signal: control.signal,
      backoff: { initialMs: 5, maxMs: 20 },
      onState: (state) => states.push(state),
    })) {
      got.push(item);
      if (item === 3) control.abort();
    }
    expect(got).toEqual([1, 2, 3]);
    expect(s.opened()).toBe(3);
    expect(states.map((x) => x.state)).toEqual([
      "connecting",
      "live",
      "reconnecting",
      "connecting",
      "reconnecting",
      "connecting",
      "live",
      "closed",
    ]);
    const retries = states.filter((x) => x.state === "reconnecting");
    // Attempts count consecutive failures: the second retry waits longer than the first could.
    expect(retries.map((x) => (x.state === "reconnecting" ? x.attempt : 0))).toEqual([1, 2]);
    expect(states.at(-1)).toEqual({ state: "closed" });
  });

  it("throws errors that would fail again, and gives up after maxAttempts", async () => {
    const bad = new ConnectError("boundary: must match", Code.InvalidArgument);
    const states: string[] = [];
    const run = async (s: ReturnType<typeof script>, maxAttempts?: number) => {
      for await (const _ of resumable(s, {
        maxAttempts,
        backoff: { initialMs: 1 },
        onState: (x) => states.push(x.state),
      }));
    };
    await expect(run(script([{ items: [], error: bad }]))).rejects.toBe(bad);
    expect(states).toEqual(["connecting", "closed"]);
    const always = script(Array.from({ length: 10 }, () => ({ items: [], error: unavailable() })));
    await expect(run(always, 3)).rejects.toMatchObject({ code: Code.Unavailable });
    expect(always.opened()).toBe(3);
  });

  it("stops the underlying call when the consumer breaks out of the loop", async () => {
    let aborted = false;
    const stream = resumable({
      open: (signal) =>
        (async function* () {
          signal.addEventListener("abort", () => {
            aborted = true;
          });
          yield 1;
          yield 2;
        })(),
      probe: () => Promise.resolve(),
    });
    for await (const item of stream) if (item === 1) break;
    expect(aborted).toBe(true);
  });
});

describe("the client library in Node, against a spawned server", () => {
  const schema = freshSchema("nodeclient");
  let server: SpawnedServer;
  let client: OrisunClient;

  beforeAll(async () => {
    server = await spawnServer({ ORISUN_PG_URL: PG_URL, ORISUN_PG_SCHEMA: schema });
    client = createOrisunClient({ baseUrl: server.url, boundary: "node_client" });
    await client.save(
      Array.from({ length: 250 }, (_, i) => ({
        type: "Numbered",
        tags: { mod: String(i % 2) },
        data: { i },
      })),
    );
  });
  afterAll(async () => {
    await server?.stop();
    await dropSchema(schema);
  });

  it("pages through every matching event, forward and backward, without repeats", async () => {
    const forward: number[] = [];
    for await (const page of client.pages({ query: { tags: { mod: "0" } }, count: 40 }))
      forward.push(...page.map((e) => JSON.parse(e.data).i as number));
    expect(forward).toEqual(Array.from({ length: 125 }, (_, k) => 2 * k));
    const backward: number[] = [];
    for await (const page of client.pages({ direction: "backward", count: 100 }))
      backward.push(...page.map((e) => JSON.parse(e.data).i as number));
    expect(backward).toEqual(Array.from({ length: 250 }, (_, k) => 249 - k));
  });

  it("reports a refused condition as such, with the boundary and marker", async () => {
    const error = await client
      .save([{ type: "Numbered", data: { i: -1 } }], {
        condition: {
          query: { types: ["Numbered"] },
          after: { commitPosition: 0, preparePosition: 0 },
        },
      })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(isConditionFailed(error)).toBe(true);
    expect(conditionFailure(error)?.metadata).toEqual({
      boundary: "node_client",
      marker_commit_position: "0",
      marker_prepare_position: "0",
    });
  });

  it("subscribes with a name: a second subscriber with the same name is refused at once", async () => {
    const control = new AbortController();
    const first = client.subscribe({ subscriberName: "projector", signal: control.signal });
    const seen: number[] = [];
    for await (const e of first) {
      seen.push(JSON.parse(e.data).i);
      if (seen.length === 250) break;
    }
    // `first` is closed by the break; hold the name with a live one and try a second. The server
    // lets go of the first's name and takes the holder's asynchronously (a session lock): on a
    // busy machine that takes more than a few hundred milliseconds, so wait for each.
    await new Promise((r) => setTimeout(r, 1_000));
    const holder = client.subscribe({
      subscriberName: "projector",
      after: { commitPosition: 999_999, preparePosition: 0 },
      signal: control.signal,
    });
    const holding = holder.next();
    await new Promise((r) => setTimeout(r, 2_000));
    const second = client.subscribe({ subscriberName: "projector", backoff: { initialMs: 1 } });
    await expect(second.next()).rejects.toMatchObject({ code: Code.AlreadyExists });
    control.abort();
    await expect(holding).resolves.toMatchObject({ done: true });
  });
});
