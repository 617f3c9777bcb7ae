import { execFile } from "node:child_process";
import { resolve } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  Direction,
  EventStore,
  SaveEventsRequestSchema,
} from "../../gen/orisun/v1/eventstore_pb.js";
import { dropSchema, freshDataDir, freshSchema, PG_URL } from "../support/databases.js";
import { grpcJsEventStore } from "../support/grpc-js.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

/** API.md's JSON example, copied verbatim. */
const API_MD_EXAMPLE = `{
  "consistency_condition": {
    "consistency_marker": {"commit_position": "0", "prepare_position": "0"},
    "criteria": {"criteria": [{"tags": [{"key": "aggregate_id", "value": "user-123"}]}]}
  },
  "events": [{
    "event_id": "evt-123", "event_type": "UserCreated",
    "tags": [{"key": "aggregate_id", "value": "user-123"}, {"key": "version", "value": "1"}],
    "data": "{\\"username\\": \\"john_doe\\"}", "metadata": "{\\"user_agent\\": \\"mozilla\\"}"
  }],
  "boundary": "users"
}`;

interface Target {
  readonly name: string;
  env(): Record<string, string>;
  cleanup(): Promise<void>;
}

function postgresTarget(): Target {
  const schema = freshSchema("proto");
  return {
    name: "postgres",
    env: () => ({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_DATA_DIR: freshDataDir(),
    }),
    cleanup: () => dropSchema(schema),
  };
}

function embeddedTarget(): Target {
  return {
    name: "embedded",
    env: () => ({ ORISUN_DATA_DIR: freshDataDir() }),
    cleanup: async () => {},
  };
}

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function run(cmd: string, args: string[], timeoutMs = 30_000): Promise<Run> {
  return new Promise((done) => {
    execFile(
      cmd,
      args,
      { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
        done({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
  });
}

/** curl that prints the body, then a last line with the HTTP status. */
async function curl(args: string[]): Promise<{ status: number; body: unknown; raw: string }> {
  const r = await run("curl", ["-sS", "--max-time", "20", "-w", "\n%{http_code}", ...args]);
  expect(r.code, r.stderr).toBe(0);
  const nl = r.stdout.lastIndexOf("\n");
  const raw = r.stdout.slice(0, nl);
  const status = Number(r.stdout.slice(nl + 1));
  let body: unknown;
  try {
    body = JSON.parse(raw);
  } catch {
    body = raw;
  }
  return { status, body, raw };
}

type Json = Record<string, unknown>;
/** Protobuf JSON prints lowerCamelCase names; accept the proto names too. */
function field(obj: unknown, snake: string): unknown {
  const o = (obj ?? {}) as Json;
  const camel = snake.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
  return o[camel] ?? o[snake];
}

const BUF = resolve("node_modules/.bin/buf");

const ZERO = { commitPosition: 0n, preparePosition: 0n };
let boundaryCounter = 0;
const nextBoundary = (p: string) => `${p}_${++boundaryCounter}`;

function saveRequest(
  boundary: string,
  ids: string[],
  marker?: { commitPosition: bigint; preparePosition: bigint },
) {
  return create(SaveEventsRequestSchema, {
    boundary,
    consistencyCondition:
      marker === undefined
        ? undefined
        : {
            consistencyMarker: marker,
            criteria: { criteria: [{ tags: [{ key: "stream", value: "s1" }] }] },
          },
    events: ids.map((id, i) => ({
      eventId: id,
      eventType: "Thing",
      tags: [
        { key: "stream", value: "s1" },
        { key: "n", value: String(i) },
      ],
      data: JSON.stringify({ n: i, id }),
      metadata: JSON.stringify({ by: "test" }),
    })),
  });
}

async function expectCode(promise: Promise<unknown>, code: Code): Promise<ConnectError> {
  try {
    await promise;
  } catch (error) {
    const e = ConnectError.from(error);
    expect(Code[e.code]).toBe(Code[code]);
    return e;
  }
  throw new Error(`expected ${Code[code]}, call succeeded`);
}

/** The same scenario for every connect-node transport. */
async function connectScenario(transport: Transport): Promise<void> {
  const client = createClient(EventStore, transport);
  const boundary = nextBoundary("cn");
  const first = await client.saveEvents(saveRequest(boundary, ["a1", "a2"], ZERO), {
    timeoutMs: 15_000,
  });
  const pos = first.logPosition;
  expect(pos).toBeDefined();
  expect(pos?.commitPosition).toBeGreaterThan(0n);

  const got = await client.getEvents({ boundary, count: 10 }, { timeoutMs: 15_000 });
  expect(got.events.map((e) => e.eventId)).toEqual(["a1", "a2"]);
  expect(got.events.every((e) => e.boundary === boundary)).toBe(true);
  expect(JSON.parse(got.events[1]?.data ?? "")).toEqual({ n: 1, id: "a2" });
  expect(JSON.parse(got.events[0]?.metadata ?? "")).toEqual({ by: "test" });
  expect(got.events[1]?.position).toEqual(pos);
  expect(got.events[0]?.tags.map((t) => `${t.key}:${t.value}`).sort()).toEqual([
    "n:0",
    "stream:s1",
  ]);
  expect(got.events[0]?.dateCreated).toBeDefined();

  // Exact retry returns the original position, even though its condition would now fail.
  const retry = await client.saveEvents(saveRequest(boundary, ["a1", "a2"], ZERO), {
    timeoutMs: 15_000,
  });
  expect(retry.logPosition).toEqual(pos);

  // A new append under the stale marker fails with ABORTED and writes nothing.
  await expectCode(client.saveEvents(saveRequest(boundary, ["a3"], ZERO)), Code.Aborted);
  // ... and succeeds from the current marker.
  const second = await client.saveEvents(saveRequest(boundary, ["a3"], pos));
  expect(second.logPosition?.commitPosition).toBeGreaterThan(pos?.commitPosition ?? 0n);

  const desc = await client.getEvents({ boundary, direction: Direction.DESC, count: 10 });
  expect(desc.events.map((e) => e.eventId)).toEqual(["a3", "a2", "a1"]);
}

describe.each([postgresTarget(), embeddedTarget()])("protocols on $name storage", (target) => {
  let server: SpawnedServer;
  beforeAll(async () => {
    server = await spawnServer(target.env());
  }, 60_000);
  afterAll(async () => {
    await server?.stop();
    await target.cleanup();
  }, 30_000);

  it("connect-node gRPC over HTTP/2", async () => {
    await connectScenario(createGrpcTransport({ baseUrl: server.url }));
  }, 30_000);

  it("Connect over HTTP/1.1", async () => {
    await connectScenario(createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
  }, 30_000);

  it("Connect over HTTP/2", async () => {
    await connectScenario(createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));
  }, 30_000);

  it("Connect over HTTP/1.1 with binary protobuf", async () => {
    await connectScenario(
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", useBinaryFormat: true }),
    );
  }, 30_000);

  it("gRPC-Web over HTTP/1.1", async () => {
    await connectScenario(createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" }));
  }, 30_000);

  it("gRPC-Web over HTTP/2", async () => {
    await connectScenario(createGrpcWebTransport({ baseUrl: server.url, httpVersion: "2" }));
  }, 30_000);

  it("@grpc/grpc-js with @grpc/proto-loader", async () => {
    const client = grpcJsEventStore(server.port, String);
    type Callback = (err: grpc.ServiceError | null, res: Json) => void;
    const call = (method: string, req: Json): Promise<Json> =>
      new Promise((done, fail) => {
        const fn = (client as unknown as Record<string, (...a: unknown[]) => void>)[method];
        if (!fn) throw new Error(`no method ${method}`);
        fn.call(client, req, { deadline: Date.now() + 15_000 }, ((err, res) =>
          err ? fail(err) : done(res)) as Callback);
      });
    try {
      const boundary = nextBoundary("grpcjs");
      const ev = (id: string) => ({
        event_id: id,
        event_type: "Thing",
        tags: [{ key: "stream", value: "s1" }],
        data: JSON.stringify({ id }),
        metadata: "",
      });
      const condition = {
        consistency_marker: { commit_position: "0", prepare_position: "0" },
        criteria: { criteria: [{ tags: [{ key: "stream", value: "s1" }], event_types: [] }] },
      };
      const req = { boundary, consistency_condition: condition, events: [ev("g1"), ev("g2")] };
      const res = await call("SaveEvents", req);
      const pos = res.log_position as { commit_position: string; prepare_position: string };
      expect(BigInt(pos.commit_position)).toBeGreaterThan(0n);

      const retry = await call("SaveEvents", req);
      expect(retry.log_position).toEqual(pos);

      const failed = await call("SaveEvents", { ...req, events: [ev("g3")] }).then(
        () => undefined,
        (e: grpc.ServiceError) => e,
      );
      expect(failed?.code).toBe(grpc.status.ABORTED);
      expect(failed?.code).toBe(10);

      const asc = await call("GetEvents", { boundary, count: 10 });
      const events = asc.events as Json[];
      expect(events.map((e) => e.event_id)).toEqual(["g1", "g2"]);
      expect(events[1]?.position).toEqual(pos);
      expect(JSON.parse(String(events[0]?.data))).toEqual({ id: "g1" });

      const desc = await call("GetEvents", { boundary, direction: "DESC" });
      expect((desc.events as Json[]).map((e) => e.event_id)).toEqual(["g2", "g1"]);
    } finally {
      client.close();
    }
  }, 30_000);

  it("curl posts API.md's JSON example verbatim", async () => {
    const post = (body: string) =>
      curl([
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
        `${server.url}/orisun.v1.EventStore/SaveEvents`,
      ]);
    const first = await post(API_MD_EXAMPLE);
    expect(first.status, first.raw).toBe(200);
    const pos = field(first.body, "log_position");
    expect(BigInt(String(field(pos, "commit_position")))).toBeGreaterThan(0n);
    expect(BigInt(String(field(pos, "prepare_position")))).toBeGreaterThan(0n);

    // The exact retry returns the original position.
    const retry = await post(API_MD_EXAMPLE);
    expect(retry.status, retry.raw).toBe(200);
    expect(field(retry.body, "log_position")).toEqual(pos);

    // Same condition, new event: the condition now fails → 409 {"code":"aborted"}.
    const conflict = await post(API_MD_EXAMPLE.replace('"evt-123"', '"evt-124"'));
    expect(conflict.status, conflict.raw).toBe(409);
    expect((conflict.body as Json).code).toBe("aborted");

    // GetEvents via Connect GET.
    const message = encodeURIComponent(
      JSON.stringify({
        boundary: "users",
        criteria: { criteria: [{ tags: [{ key: "aggregate_id", value: "user-123" }] }] },
      }),
    );
    const got = await curl([
      `${server.url}/orisun.v1.EventStore/GetEvents?connect=v1&encoding=json&message=${message}`,
    ]);
    expect(got.status, got.raw).toBe(200);
    const events = field(got.body, "events") as Json[];
    expect(events).toHaveLength(1);
    const event = events[0];
    expect(field(event, "event_id")).toBe("evt-123");
    expect(field(event, "event_type")).toBe("UserCreated");
    expect(field(event, "boundary")).toBe("users");
    expect(JSON.parse(String(field(event, "data")))).toEqual({ username: "john_doe" });
    expect(JSON.parse(String(field(event, "metadata")))).toEqual({ user_agent: "mozilla" });
    expect(field(event, "position")).toEqual(pos);
    expect(
      (field(event, "tags") as Json[]).map((t) => `${String(t.key)}:${String(t.value)}`).sort(),
    ).toEqual(["aggregate_id:user-123", "version:1"]);
  }, 30_000);

  it("Connect GET with DESC and no from_position returns the last event first", async () => {
    const boundary = nextBoundary("get");
    for (const id of ["d1", "d2", "d3"]) {
      const r = await curl([
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        JSON.stringify({ boundary, events: [{ event_id: id, event_type: "T", data: "{}" }] }),
        `${server.url}/orisun.v1.EventStore/SaveEvents`,
      ]);
      expect(r.status, r.raw).toBe(200);
    }
    const message = encodeURIComponent(JSON.stringify({ boundary, direction: "DESC", count: 2 }));
    const got = await curl([
      `${server.url}/orisun.v1.EventStore/GetEvents?connect=v1&encoding=json&message=${message}`,
    ]);
    expect(got.status, got.raw).toBe(200);
    expect((field(got.body, "events") as Json[]).map((e) => field(e, "event_id"))).toEqual([
      "d3",
      "d2",
    ]);
  }, 30_000);

  it("buf curl over gRPC with prior knowledge", async () => {
    const boundary = nextBoundary("buf");
    const bufCurl = (method: string, body: Json) =>
      run(BUF, [
        "curl",
        "--http2-prior-knowledge",
        "--protocol",
        "grpc",
        "--schema",
        "proto",
        "-d",
        JSON.stringify(body),
        `${server.url}/orisun.v1.EventStore/${method}`,
      ]);
    const saved = await bufCurl("SaveEvents", {
      boundary,
      consistency_condition: {
        consistency_marker: { commit_position: "0", prepare_position: "0" },
        criteria: { criteria: [{ event_types: ["BufThing"] }] },
      },
      events: [
        { event_id: "b1", event_type: "BufThing", data: '{"a":1}' },
        { event_id: "b2", event_type: "BufThing", data: '{"a":2}' },
      ],
    });
    expect(saved.code, saved.stderr).toBe(0);
    const pos = field(JSON.parse(saved.stdout), "log_position");
    expect(BigInt(String(field(pos, "commit_position")))).toBeGreaterThan(0n);

    const conflict = await bufCurl("SaveEvents", {
      boundary,
      consistency_condition: { criteria: { criteria: [{ event_types: ["BufThing"] }] } },
      events: [{ event_id: "b3", event_type: "BufThing", data: "{}" }],
    });
    expect(conflict.code).not.toBe(0);
    expect(conflict.stderr + conflict.stdout).toMatch(/aborted/i);

    const got = await bufCurl("GetEvents", { boundary, direction: "DESC" });
    expect(got.code, got.stderr).toBe(0);
    const events = field(JSON.parse(got.stdout), "events") as Json[];
    expect(events.map((e) => field(e, "event_id"))).toEqual(["b2", "b1"]);
  }, 60_000);

  it("buf curl streams an import: messages then the commit, over gRPC and Connect", async () => {
    for (const protocol of ["grpc", "connect"]) {
      const boundary = nextBoundary("bufimport");
      const event = (n: number) => ({
        eventId: `i${n}`,
        eventType: "Restored",
        data: `{"n":${n}}`,
        position: { commitPosition: String(n), preparePosition: String(n) },
        dateCreated: "2026-12-02T02:29:19.566Z",
      });
      const messages = [
        { boundary, events: [event(1), event(2)] },
        { boundary, events: [event(3)] },
        { commit: true },
      ];
      const imported = await run(BUF, [
        "curl",
        "--http2-prior-knowledge",
        "--protocol",
        protocol,
        "--schema",
        "proto",
        "-d",
        messages.map((m) => JSON.stringify(m)).join("\n"),
        `${server.url}/orisun.v1.Admin/ImportEvents`,
      ]);
      expect(imported.code, imported.stderr).toBe(0);
      expect(JSON.parse(imported.stdout)).toEqual({
        head: { commitPosition: "3", preparePosition: "3" },
        imported: "3",
      });
      const got = await run(BUF, [
        "curl",
        "--http2-prior-knowledge",
        "--schema",
        "proto",
        "-d",
        JSON.stringify({ boundary }),
        `${server.url}/orisun.v1.EventStore/GetEvents`,
      ]);
      const events = field(JSON.parse(got.stdout), "events") as Json[];
      expect(events.map((e) => field(e, "eventId"))).toEqual(["i1", "i2", "i3"]);
    }
  }, 60_000);
});
