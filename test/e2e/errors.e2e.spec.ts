import { connect, createServer, type Server, type Socket } from "node:net";
import {
  create,
  fromBinary,
  type MessageInitShape,
  toBinary,
  toJsonString,
} from "@bufbuild/protobuf";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { Code, type ConnectError, createClient } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import {
  credentials,
  Client as GrpcClient,
  status as grpcStatus,
  type ServiceError,
} from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { type ErrorInfo, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import {
  type Direction,
  EventStore,
  type EventToSaveSchema,
  GetEventsRequestSchema,
  SaveEventsRequestSchema,
} from "../../gen/orisun/v1/eventstore_pb.js";
import { failure } from "../support/clients.js";
import {
  dropSchema,
  freshDataDir,
  freshSchema,
  PG_HOST,
  PG_PORT,
  PG_URL,
  pgUrlVia,
} from "../support/databases.js";
import { frame, grpcRaw, rawCall } from "../support/raw-rpc.js";
import { freePort, type SpawnedServer, spawnServer } from "../support/spawn-server.js";

type Client = ReturnType<typeof createClient<typeof EventStore>>;
type SaveInit = MessageInitShape<typeof SaveEventsRequestSchema>;
type GetInit = MessageInitShape<typeof GetEventsRequestSchema>;
type EventInit = MessageInitShape<typeof EventToSaveSchema>;

const LIMITS = {
  ORISUN_MAX_EVENTS_PER_SAVE: "5",
  ORISUN_MAX_EVENT_BYTES: "1000",
  ORISUN_MAX_TAGS_PER_EVENT: "4",
  ORISUN_MAX_TAG_BYTES: "16",
  ORISUN_MAX_REQUEST_BYTES: "8192",
};

const INT8_OVER = "18446744073709551615";
const B = "errs";

/** The Any details of a google.rpc.Status (code 1, message 2, details 3), read by hand. */
function statusDetails(bin: Uint8Array): Array<{ typeUrl: string; value: Uint8Array }> {
  const details: Array<{ typeUrl: string; value: Uint8Array }> = [];
  const status = new BinaryReader(bin);
  while (status.pos < status.len) {
    const [no, wireType] = status.tag();
    if (no !== 3) {
      status.skip(wireType);
      continue;
    }
    const any = new BinaryReader(status.bytes());
    const detail: { typeUrl: string; value: Uint8Array } = { typeUrl: "", value: new Uint8Array() };
    while (any.pos < any.len) {
      const [n, w] = any.tag();
      if (n === 1) detail.typeUrl = any.string();
      else if (n === 2) detail.value = any.bytes();
      else any.skip(w);
    }
    details.push(detail);
  }
  return details;
}

function ev(id: string, extra: EventInit = {}) {
  return { eventId: id, eventType: "Thing", data: '{"ok":true}', ...extra };
}

async function postJson(
  url: string,
  method: string,
  body: string,
): Promise<{ status: number; json: { code?: string; message?: string } }> {
  const res = await fetch(`${url}/orisun.v1.EventStore/${method}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body,
    signal: AbortSignal.timeout(15_000),
  });
  return { status: res.status, json: (await res.json()) as { code?: string; message?: string } };
}

describe("bad input on PostgreSQL (small limits)", () => {
  const schema = freshSchema("errs");
  let server: SpawnedServer;
  let client: Client;

  const ids = async (boundary = B) =>
    (await client.getEvents({ boundary, count: 10_000 }, { timeoutMs: 10_000 })).events.map(
      (e) => e.eventId,
    );

  /** Runs the bad call, checks code and message, and that the boundary did not change. */
  async function rejects(
    call: () => Promise<unknown>,
    code: Code,
    message: RegExp,
    boundary = B,
  ): Promise<ConnectError> {
    const before = await ids(boundary);
    const error = await failure(call());
    expect(Code[error.code], error.rawMessage).toBe(Code[code]);
    expect(error.rawMessage).toMatch(message);
    expect(await ids(boundary)).toEqual(before);
    return error;
  }
  const save = (req: SaveInit) => client.saveEvents(req, { timeoutMs: 10_000 });
  const get = (req: GetInit) => client.getEvents(req, { timeoutMs: 10_000 });

  beforeAll(async () => {
    server = await spawnServer({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_DATA_DIR: freshDataDir(),
      ...LIMITS,
    });
    client = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
    await save({ boundary: B, events: [ev("seed-1"), ev("seed-2")] });
  }, 60_000);
  afterAll(async () => {
    await server?.stop();
    await dropSchema(schema);
  }, 30_000);

  it("seed is there", async () => {
    expect(await ids()).toEqual(["seed-1", "seed-2"]);
  });

  it.each([
    ["uppercase", "Errs"],
    ["leading digit", "1errs"],
    ["hyphen", "err-s"],
    ["too long", `e${"x".repeat(63)}`],
    ["empty", ""],
  ])("boundary: %s name", async (_label, boundary) => {
    await rejects(() => save({ boundary, events: [ev("x1")] }), Code.InvalidArgument, /boundary/);
    await rejects(() => get({ boundary }), Code.InvalidArgument, /boundary/);
  });

  it("criterion with neither tags nor types in a condition", async () => {
    await rejects(
      () =>
        save({
          boundary: B,
          consistencyCondition: {
            criteria: { criteria: [{ tags: [{ key: "a", value: "b" }] }, {}] },
          },
          events: [ev("x2")],
        }),
      Code.InvalidArgument,
      /consistency_condition\.criteria\.criteria\[1\]/,
    );
  });

  it("criterion with neither tags nor types in GetEvents", async () => {
    await rejects(
      () => get({ boundary: B, criteria: { criteria: [{}] } }),
      Code.InvalidArgument,
      /criteria\.criteria\[0\]/,
    );
  });

  it("non-JSON data", async () => {
    await rejects(
      () => save({ boundary: B, events: [ev("x3"), ev("x4", { data: "{not json" })] }),
      Code.InvalidArgument,
      /events\[1\]\.data.*JSON/,
    );
  });

  it("empty data", async () => {
    await rejects(
      () => save({ boundary: B, events: [ev("x5", { data: "" })] }),
      Code.InvalidArgument,
      /events\[0\]\.data/,
    );
  });

  it("non-JSON metadata", async () => {
    await rejects(
      () => save({ boundary: B, events: [ev("x6", { metadata: "meta" })] }),
      Code.InvalidArgument,
      /events\[0\]\.metadata.*JSON/,
    );
  });

  it("empty metadata is allowed (control)", async () => {
    const b = "errs_meta";
    await save({ boundary: b, events: [ev("m1", { metadata: "" })] });
    expect(await ids(b)).toEqual(["m1"]);
  });

  it("empty events list", async () => {
    await rejects(() => save({ boundary: B, events: [] }), Code.InvalidArgument, /events/);
  });

  it("empty event_type", async () => {
    await rejects(
      () => save({ boundary: B, events: [ev("x7"), ev("x8", { eventType: "" })] }),
      Code.InvalidArgument,
      /events\[1\]\.event_type/,
    );
  });

  it("NUL character in event_type", async () => {
    await rejects(
      () => save({ boundary: B, events: [ev("x9", { eventType: "Bad\u0000Type" })] }),
      Code.InvalidArgument,
      /events\[0\]\.event_type.*NUL/,
    );
  });

  it("too many events", async () => {
    const events = Array.from({ length: 6 }, (_, i) => ev(`many-${i}`));
    const error = await rejects(
      () => save({ boundary: B, events }),
      Code.ResourceExhausted,
      /events/,
    );
    expect(error.rawMessage).toMatch(/5/);
    // Exactly at the limit works (on another boundary, to keep B's history stable).
    await save({ boundary: "errs_limit", events: events.slice(0, 5) });
    expect(await ids("errs_limit")).toHaveLength(5);
  });

  it("oversize event data", async () => {
    const data = JSON.stringify({ s: "x".repeat(1000) });
    await rejects(
      () => save({ boundary: B, events: [ev("big", { data })] }),
      Code.ResourceExhausted,
      /events\[0\]\.data/,
    );
    // Multibyte: 400 characters, 1,200 bytes of UTF-8.
    await rejects(
      () => save({ boundary: B, events: [ev("big2", { data: JSON.stringify("€".repeat(400)) })] }),
      Code.ResourceExhausted,
      /events\[0\]\.data/,
    );
  });

  it("too many tags", async () => {
    const tags = Array.from({ length: 5 }, (_, i) => ({ key: `k${i}`, value: "v" }));
    await rejects(
      () => save({ boundary: B, events: [ev("tags", { tags })] }),
      Code.ResourceExhausted,
      /events\[0\]\.tags/,
    );
    await rejects(
      () => get({ boundary: B, criteria: { criteria: [{ tags }] } }),
      Code.ResourceExhausted,
      /criteria\.criteria\[0\]\.tags/,
    );
  });

  it("oversize tag key and value count UTF-8 bytes", async () => {
    const multibyte = "é".repeat(9); // 9 characters, 18 bytes > 16
    expect(multibyte.length).toBeLessThan(16);
    await rejects(
      () => save({ boundary: B, events: [ev("tk", { tags: [{ key: multibyte, value: "v" }] })] }),
      Code.ResourceExhausted,
      /events\[0\]\.tags\[0\]\.key/,
    );
    await rejects(
      () => save({ boundary: B, events: [ev("tv", { tags: [{ key: "k", value: multibyte }] })] }),
      Code.ResourceExhausted,
      /events\[0\]\.tags\[0\]\.value/,
    );
    await rejects(
      () =>
        get({ boundary: B, criteria: { criteria: [{ tags: [{ key: "k", value: multibyte }] }] } }),
      Code.ResourceExhausted,
      /criteria\.criteria\[0\]\.tags\[0\]\.value/,
    );
    await rejects(
      () =>
        save({
          boundary: B,
          consistencyCondition: {
            criteria: { criteria: [{ tags: [{ key: multibyte, value: "" }] }] },
          },
          events: [ev("tc")],
        }),
      Code.ResourceExhausted,
      /consistency_condition\.criteria\.criteria\[0\]\.tags\[0\]\.key/,
    );
    // 16 bytes exactly is fine.
    await save({
      boundary: "errs_tag_ok",
      events: [ev("ok", { tags: [{ key: "é".repeat(8), value: "x".repeat(16) }] })],
    });
    expect(await ids("errs_tag_ok")).toEqual(["ok"]);
  });

  it("oversize request body gives RESOURCE_EXHAUSTED", async () => {
    // Each event is within every per-event limit; together they exceed 8 KiB.
    const events = Array.from({ length: 5 }, (_, i) =>
      ev(`${i}${"i".repeat(200)}`, {
        eventType: "T".repeat(250),
        data: JSON.stringify({ s: "d".repeat(900) }),
        metadata: JSON.stringify({ s: "m".repeat(900) }),
      }),
    );
    await rejects(() => save({ boundary: B, events }), Code.ResourceExhausted, /size|large|bytes/i);
    const json = await postJson(
      server.url,
      "SaveEvents",
      JSON.stringify({
        boundary: B,
        events: events.map((e) => ({
          event_id: e.eventId,
          event_type: e.eventType,
          data: e.data,
          metadata: e.metadata,
        })),
      }),
    );
    expect(json.status).toBe(429);
    expect(json.json.code).toBe("resource_exhausted");
    expect(await ids()).toEqual(["seed-1", "seed-2"]);
  });

  it("position above int64 max", async () => {
    await rejects(
      () =>
        save({
          boundary: B,
          consistencyCondition: {
            consistencyMarker: { commitPosition: BigInt(INT8_OVER), preparePosition: 0n },
            criteria: { criteria: [{ eventTypes: ["Thing"] }] },
          },
          events: [ev("pos")],
        }),
      Code.InvalidArgument,
      /consistency_condition\.consistency_marker\.commit_position/,
    );
    await rejects(
      () =>
        get({
          boundary: B,
          fromPosition: { commitPosition: 1n, preparePosition: BigInt(INT8_OVER) },
        }),
      Code.InvalidArgument,
      /from_position\.prepare_position/,
    );
    const json = await postJson(
      server.url,
      "GetEvents",
      JSON.stringify({ boundary: B, from_position: { commit_position: INT8_OVER } }),
    );
    expect(json.status).toBe(400);
    expect(json.json.code).toBe("invalid_argument");
    expect(json.json.message).toMatch(/from_position\.commit_position/);
  });

  it("malformed position in JSON", async () => {
    const before = await ids();
    const json = await postJson(
      server.url,
      "SaveEvents",
      JSON.stringify({
        boundary: B,
        consistency_condition: { consistency_marker: { commit_position: "abc" } },
        events: [{ event_id: "abc", event_type: "T", data: "{}" }],
      }),
    );
    expect(json.status).toBe(400);
    expect(json.json.code).toBe("invalid_argument");
    expect(json.json.message).toMatch(/commit_position/);
    expect(await ids()).toEqual(before);
  });

  it("unknown direction (numeric 7 via JSON)", async () => {
    const json = await postJson(
      server.url,
      "GetEvents",
      JSON.stringify({ boundary: B, direction: 7 }),
    );
    expect(json.status).toBe(400);
    expect(json.json.code).toBe("invalid_argument");
    expect(json.json.message).toMatch(/direction/);
    await rejects(
      () => get({ boundary: B, direction: 7 as Direction }),
      Code.InvalidArgument,
      /direction/,
    );
  });

  it("duplicate event_id within one request", async () => {
    await rejects(
      () => save({ boundary: B, events: [ev("dup"), ev("other"), ev("dup")] }),
      Code.InvalidArgument,
      /events\[2\]\.event_id.*events\[0\]/,
    );
  });

  it("a request mixing stored and new ids fails with ALREADY_EXISTS", async () => {
    await rejects(
      () => save({ boundary: B, events: [ev("seed-1"), ev("fresh")] }),
      Code.AlreadyExists,
      /./,
    );
  });

  it("count 0 returns 100 events", async () => {
    const b = "errs_count";
    for (let i = 0; i < 30; i++) {
      await save({ boundary: b, events: Array.from({ length: 5 }, (_, j) => ev(`c${i * 5 + j}`)) });
    }
    expect(await ids(b)).toHaveLength(150);
    const zero = await get({ boundary: b, count: 0 });
    expect(zero.events).toHaveLength(100);
    expect(zero.events[0]?.eventId).toBe("c0");
    const absent = await get({ boundary: b });
    expect(absent.events).toHaveLength(100);
  }, 60_000);
});

describe("configured boundaries", () => {
  const schema = freshSchema("bnd");
  let server: SpawnedServer;
  let client: Client;
  beforeAll(async () => {
    server = await spawnServer({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_DATA_DIR: freshDataDir(),
      ORISUN_BOUNDARIES: "users,orders",
    });
    client = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
  }, 60_000);
  afterAll(async () => {
    await server?.stop();
    await dropSchema(schema);
  }, 30_000);

  it("rejects a boundary not in ORISUN_BOUNDARIES and accepts the configured ones", async () => {
    const save = await failure(
      client.saveEvents({ boundary: "payments", events: [ev("p1")] }, { timeoutMs: 10_000 }),
    );
    expect(Code[save.code]).toBe(Code[Code.InvalidArgument]);
    expect(save.rawMessage).toMatch(/boundary.*payments/);
    const read = await failure(client.getEvents({ boundary: "payments" }, { timeoutMs: 10_000 }));
    expect(Code[read.code]).toBe(Code[Code.InvalidArgument]);
    expect(read.rawMessage).toMatch(/boundary/);

    await client.saveEvents({ boundary: "orders", events: [ev("o1")] }, { timeoutMs: 10_000 });
    const got = await client.getEvents({ boundary: "orders" }, { timeoutMs: 10_000 });
    expect(got.events.map((e) => e.eventId)).toEqual(["o1"]);
    expect((await client.getEvents({ boundary: "users" })).events).toEqual([]);
  }, 30_000);

  it("count above 10,000 is clamped to 10,000", async () => {
    const events = (n: number, p: string) =>
      Array.from({ length: n }, (_, i) => ({ eventId: `${p}${i}`, eventType: "T", data: "1" }));
    await client.saveEvents(
      { boundary: "users", events: events(10_000, "a") },
      { timeoutMs: 50_000 },
    );
    await client.saveEvents({ boundary: "users", events: events(5, "b") }, { timeoutMs: 10_000 });
    const got = await client.getEvents({ boundary: "users", count: 20_000 }, { timeoutMs: 30_000 });
    expect(got.events).toHaveLength(10_000);
  }, 90_000);
});

/** A TCP proxy in front of PostgreSQL that the test can cut and restore. */
class PgProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  constructor(readonly port: number) {}

  async start(): Promise<void> {
    const server = createServer((client) => {
      const upstream = connect(PG_PORT, PG_HOST);
      this.sockets.add(client);
      this.sockets.add(upstream);
      const drop = () => {
        client.destroy();
        upstream.destroy();
        this.sockets.delete(client);
        this.sockets.delete(upstream);
      };
      client.on("error", drop).on("close", drop);
      upstream.on("error", drop).on("close", drop);
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((ok, fail) => {
      server.once("error", fail);
      server.listen(this.port, "127.0.0.1", () => ok());
    });
    this.server = server;
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    if (server) await new Promise<void>((ok) => server.close(() => ok()));
  }
}

describe("database down", () => {
  const schema = freshSchema("down");
  let proxy: PgProxy;
  let server: SpawnedServer;
  let client: Client;
  beforeAll(async () => {
    proxy = new PgProxy(await freePort());
    await proxy.start();
    server = await spawnServer({
      ORISUN_PG_URL: pgUrlVia(proxy.port),
      ORISUN_PG_SCHEMA: schema,
      ORISUN_DATA_DIR: freshDataDir(),
    });
    client = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
  }, 60_000);
  afterAll(async () => {
    await server?.stop();
    await proxy?.stop();
    await dropSchema(schema);
  }, 30_000);

  it("gives UNAVAILABLE without SQL while PostgreSQL is unreachable, then recovers", async () => {
    await client.saveEvents({ boundary: "db", events: [ev("before")] }, { timeoutMs: 10_000 });
    await proxy.stop();

    const save = await failure(
      client.saveEvents({ boundary: "db", events: [ev("during")] }, { timeoutMs: 15_000 }),
    );
    const read = await failure(client.getEvents({ boundary: "db" }, { timeoutMs: 15_000 }));
    for (const error of [save, read]) {
      expect(
        Code[error.code],
        `${error.rawMessage}; exit=${server.process.exitCode}\n${server.output().slice(-3000)}`,
      ).toBe(Code[Code.Unavailable]);
      expect(error.rawMessage).not.toMatch(
        /select|insert|update|delete|from\s|where\s|ECONNREFUSED|search_path|pg_|orisun_/i,
      );
    }

    await proxy.start();
    const deadline = Date.now() + 10_000;
    let events: string[] | undefined;
    while (events === undefined) {
      try {
        events = (await client.getEvents({ boundary: "db" }, { timeoutMs: 5_000 })).events.map(
          (e) => e.eventId,
        );
      } catch (error) {
        if (Date.now() > deadline) throw error;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    expect(events).toEqual(["before"]);
    await client.saveEvents({ boundary: "db", events: [ev("after")] }, { timeoutMs: 10_000 });
    const all = await client.getEvents({ boundary: "db" }, { timeoutMs: 10_000 });
    expect(all.events.map((e) => e.eventId)).toEqual(["before", "after"]);
  }, 60_000);
});

describe("undecodable input, unknown names and extreme positions on every transport", () => {
  const schema = freshSchema("codes");
  const C = "codes";
  const MAX = 9_223_372_036_854_775_807n; // 2^63-1, the largest int8
  const OVER = 18_446_744_073_709_551_615n; // 2^64-1, the largest uint64
  let server: SpawnedServer;
  let client: Client;
  const enc = new TextEncoder();

  const ids = async () =>
    (await client.getEvents({ boundary: C, count: 10_000 }, { timeoutMs: 10_000 })).events.map(
      (e) => e.eventId,
    );

  /** A SaveEvents body whose event_type holds the byte 0xFF: not UTF-8. */
  function saveWithBadUtf8(): Uint8Array {
    const bytes = toBinary(
      SaveEventsRequestSchema,
      create(SaveEventsRequestSchema, { boundary: C, events: [ev("utf8", { eventType: "T#T" })] }),
    );
    const at = Buffer.from(bytes).indexOf("T#T");
    bytes[at + 1] = 0xff;
    return bytes;
  }
  function getWithBadUtf8(): Uint8Array {
    const bytes = toBinary(
      GetEventsRequestSchema,
      create(GetEventsRequestSchema, { boundary: "c#des" }),
    );
    bytes[Buffer.from(bytes).indexOf("c#des") + 1] = 0xff;
    return bytes;
  }
  const truncated = (bytes: Uint8Array) => bytes.subarray(0, bytes.length - 3);
  const saveBody = () =>
    toBinary(
      SaveEventsRequestSchema,
      create(SaveEventsRequestSchema, { boundary: C, events: [ev("cut")] }),
    );
  const getBody = () =>
    toBinary(
      GetEventsRequestSchema,
      create(GetEventsRequestSchema, { boundary: "codes_longer_name" }),
    );
  const garbage = new Uint8Array(12).fill(0xff); // a varint that never ends
  const badWireType = new Uint8Array([0x0f, 0x01]); // field 1, wire type 7

  beforeAll(async () => {
    server = await spawnServer({ ORISUN_PG_URL: PG_URL, ORISUN_PG_SCHEMA: schema });
    client = createClient(EventStore, createGrpcTransport({ baseUrl: server.url }));
    await client.saveEvents({ boundary: C, events: [ev("c1"), ev("c2")] }, { timeoutMs: 10_000 });
  }, 60_000);
  afterAll(async () => {
    await server?.stop();
    await dropSchema(schema);
  }, 30_000);

  const transports = ["grpc", "grpc-web", "connect-proto"] as const;
  const undecodable: Array<[string, string, () => Uint8Array]> = [
    ["truncated SaveEvents", "SaveEvents", () => truncated(saveBody())],
    ["garbage SaveEvents", "SaveEvents", () => garbage],
    ["wire type 7 SaveEvents", "SaveEvents", () => badWireType],
    ["invalid UTF-8 in SaveEvents event_type", "SaveEvents", saveWithBadUtf8],
    ["truncated GetEvents", "GetEvents", () => truncated(getBody())],
    ["garbage GetEvents", "GetEvents", () => garbage],
    ["invalid UTF-8 in GetEvents boundary", "GetEvents", getWithBadUtf8],
  ];
  const cases = undecodable.flatMap(([label, method, body]) => [
    ...transports.map((t) => [t, label, method, body] as const),
    ...(method === "GetEvents" ? [["connect-get", label, method, body] as const] : []),
  ]);

  it.each(cases)(
    "%s: %s gives INVALID_ARGUMENT and writes nothing",
    async (transport, _l, method, body) => {
      const before = await ids();
      const status = await rawCall(server.url, transport, method, body());
      expect(Code[status.code], status.message).toBe(Code[Code.InvalidArgument]);
      if (transport.startsWith("connect")) expect(status.http).toBe(400);
      expect(await ids()).toEqual(before);
    },
  );

  it.each([
    ["grpc", "SubscribeToEvents"],
    ["grpc-web", "SubscribeToEvents"],
    ["grpc", "SubscribeToPubSub"],
    ["grpc", "PublishToPubSub"],
  ] as const)("%s: garbage %s gives INVALID_ARGUMENT", async (transport, method) => {
    const status = await rawCall(server.url, transport, method, garbage);
    expect(Code[status.code], status.message).toBe(Code[Code.InvalidArgument]);
  });

  const json = (text: string) => enc.encode(text);
  /** JSON text with a raw 0xFF byte where `#` is. */
  const jsonWithRawByte = (text: string) => {
    const bytes = enc.encode(text);
    bytes[bytes.indexOf(0x23)] = 0xff;
    return bytes;
  };
  it.each([
    [
      "raw invalid UTF-8 in event_type",
      "SaveEvents",
      jsonWithRawByte(
        `{"boundary":"${C}","events":[{"event_id":"j1","event_type":"T#T","data":"{}"}]}`,
      ),
      /UTF-8|utf-8|encoded data/,
    ],
    [
      "a lone surrogate escape in event_type",
      "SaveEvents",
      json(`{"boundary":"${C}","events":[{"event_id":"j2","event_type":"T\\ud800T","data":"{}"}]}`),
      /event_type/,
    ],
    [
      "an unknown field",
      "SaveEvents",
      json(
        `{"boundary":"${C}","events":[{"event_id":"j3","event_type":"T","data":"{}"}],"bogus":1}`,
      ),
      /bogus/,
    ],
    [
      "an unknown field in a nested message",
      "SaveEvents",
      json(
        `{"boundary":"${C}","events":[{"event_id":"j4","event_type":"T","data":"{}","colour":"red"}]}`,
      ),
      /colour/,
    ],
    [
      "an unknown enum name",
      "GetEvents",
      json(`{"boundary":"${C}","direction":"SIDEWAYS"}`),
      /direction|SIDEWAYS/,
    ],
  ])(
    "Connect JSON with %s gives INVALID_ARGUMENT (400) and writes nothing",
    async (_l, method, body, message) => {
      const before = await ids();
      const status = await rawCall(server.url, "connect-json", method, body);
      expect(Code[status.code], status.message).toBe(Code[Code.InvalidArgument]);
      expect(status.http).toBe(400);
      expect(status.message).toMatch(message);
      expect(await ids()).toEqual(before);
    },
  );

  it("Connect GET with JSON whose percent-encoding is not UTF-8 gives INVALID_ARGUMENT", async () => {
    const res = await fetch(
      `${server.url}/orisun.v1.EventStore/GetEvents?connect=v1&encoding=json&message=${encodeURIComponent(`{"boundary":"${C}"`)}%2C%22criteria%22%3A%7B%22criteria%22%3A%5B%7B%22event_types%22%3A%5B%22T%FFT%22%5D%7D%5D%7D%7D`,
      { signal: AbortSignal.timeout(15_000) },
    );
    const body = (await res.json()) as { code?: string; message?: string };
    expect(res.status, JSON.stringify(body)).toBe(400);
    expect(body.code).toBe("invalid_argument");
  });

  it("a gRPC call with no request message, or two, gives INVALID_ARGUMENT", async () => {
    const one = frame(
      toBinary(GetEventsRequestSchema, create(GetEventsRequestSchema, { boundary: C })),
    );
    const save = frame(
      toBinary(
        SaveEventsRequestSchema,
        create(SaveEventsRequestSchema, { boundary: C, events: [{ eventType: "T", data: "{}" }] }),
      ),
    );
    for (const [method, body] of [
      ["GetEvents", new Uint8Array()],
      ["SubscribeToEvents", new Uint8Array()],
      ["GetEvents", new Uint8Array([...one, ...one])],
      // SaveEvents over gRPC is served by the server's own HTTP/2 path (grpc-unary-path.ts).
      ["SaveEvents", new Uint8Array()],
      ["SaveEvents", new Uint8Array([...save, ...save])],
    ] as const) {
      const status = await grpcRaw(server.url, method, body);
      expect(Code[status.code], `${method}: ${status.message}`).toBe(Code[Code.InvalidArgument]);
      expect(status.message).toMatch(/^the request must carry exactly one message/);
    }
  });

  it("Connect GET with base64=1 and a message that is not base64 gives INVALID_ARGUMENT", async () => {
    for (const message of ["!!", "abcde", "a b"]) {
      const res = await fetch(
        `${server.url}/orisun.v1.EventStore/GetEvents?connect=v1&encoding=json&base64=1&message=${encodeURIComponent(message)}`,
        { signal: AbortSignal.timeout(15_000) },
      );
      const body = (await res.json()) as { code?: string; message?: string };
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(body.code).toBe("invalid_argument");
      expect(body.message).toMatch(/^message: with base64=1/);
    }
    // The same request well encoded is answered.
    const good = Buffer.from(JSON.stringify({ boundary: C })).toString("base64url");
    const res = await fetch(
      `${server.url}/orisun.v1.EventStore/GetEvents?connect=v1&encoding=json&base64=1&message=${good}`,
      { signal: AbortSignal.timeout(15_000) },
    );
    expect(res.status).toBe(200);
  });

  const positionFields = [
    ["commit_position", "commitPosition"],
    ["prepare_position", "preparePosition"],
  ] as const;
  const at = (key: "commitPosition" | "preparePosition", value: bigint) => ({
    commitPosition: 0n,
    preparePosition: 0n,
    [key]: value,
  });

  it.each(positionFields)(
    "2^64-1 in %s of every position field: INVALID_ARGUMENT naming it",
    async (name, key) => {
      const before = await ids();
      const calls: Array<[string, () => Promise<unknown>]> = [
        [
          "consistency_condition.consistency_marker",
          () =>
            client.saveEvents(
              {
                boundary: C,
                consistencyCondition: {
                  consistencyMarker: at(key, OVER),
                  criteria: { criteria: [{ eventTypes: ["Thing"] }] },
                },
                events: [ev(`over-${name}`)],
              },
              { timeoutMs: 10_000 },
            ),
        ],
        [
          "from_position",
          () =>
            client.getEvents({ boundary: C, fromPosition: at(key, OVER) }, { timeoutMs: 10_000 }),
        ],
        [
          "after_position",
          async () => {
            for await (const _ of client.subscribeToEvents(
              { boundary: C, afterPosition: at(key, OVER) },
              { timeoutMs: 10_000 },
            ));
          },
        ],
      ];
      for (const [field, call] of calls) {
        const error = await failure(call());
        expect(Code[error.code], error.rawMessage).toBe(Code[Code.InvalidArgument]);
        expect(error.rawMessage).toContain(`${field}.${name}`);
        expect(error.rawMessage).toContain(String(MAX));
      }
      expect(await ids()).toEqual(before);
    },
  );

  /** The first event a subscription delivers within `ms`, or undefined; the stream is closed after. */
  async function firstWithin(
    after: { commitPosition: bigint; preparePosition: bigint },
    ms: number,
  ) {
    const control = new AbortController();
    const stream = client.subscribeToEvents(
      { boundary: C, afterPosition: after },
      { signal: control.signal },
    );
    const it = stream[Symbol.asyncIterator]();
    const timer = new Promise<"quiet">((r) => setTimeout(() => r("quiet"), ms));
    try {
      const got = await Promise.race([it.next(), timer]);
      return got === "quiet" ? undefined : got.done ? "ended" : got.value.eventId;
    } finally {
      control.abort();
      await it.return?.().catch(() => {});
    }
  }

  it("2^63-1 is a valid position everywhere: after it lies nothing, before it everything", async () => {
    const first = (await client.getEvents({ boundary: C }, { timeoutMs: 10_000 })).events[0];
    expect(first?.position?.commitPosition).toBeGreaterThan(0n);
    // Reads from the largest positions.
    for (const key of ["commitPosition", "preparePosition"] as const) {
      const asc = await client.getEvents({ boundary: C, fromPosition: at(key, MAX) });
      expect(asc.events.length, key).toBe(key === "preparePosition" ? (await ids()).length : 0);
    }
    const desc = await client.getEvents({
      boundary: C,
      fromPosition: { commitPosition: MAX, preparePosition: MAX },
      direction: 1,
    });
    expect(desc.events.map((e) => e.eventId)).toEqual((await ids()).reverse());
    // After (0, MAX) comes commit 1; after (MAX, x) nothing ever, and no error either.
    expect(await firstWithin({ commitPosition: 0n, preparePosition: MAX }, 10_000)).toBe(
      first?.eventId,
    );
    expect(await firstWithin({ commitPosition: MAX, preparePosition: 0n }, 1_500)).toBeUndefined();
    expect(await firstWithin({ commitPosition: MAX, preparePosition: MAX }, 1_500)).toBeUndefined();
    // A condition with the largest marker has nothing after it: the append goes through.
    const before = await ids();
    await client.saveEvents(
      {
        boundary: C,
        consistencyCondition: {
          consistencyMarker: { commitPosition: MAX, preparePosition: MAX },
          criteria: { criteria: [{ eventTypes: ["Thing"] }] },
        },
        events: [ev("after-max")],
      },
      { timeoutMs: 10_000 },
    );
    expect(await ids()).toEqual([...before, "after-max"]);
  }, 60_000);

  describe("a failed condition carries google.rpc.ErrorInfo on every transport", () => {
    const K = "codes_cond";
    const conflicting = () =>
      create(SaveEventsRequestSchema, {
        boundary: K,
        consistencyCondition: {
          consistencyMarker: { commitPosition: 0n, preparePosition: 0n },
          criteria: { criteria: [{ eventTypes: ["Thing"] }] },
        },
        events: [ev("late")],
      });
    const kIds = async () =>
      (await client.getEvents({ boundary: K }, { timeoutMs: 10_000 })).events.map((e) => e.eventId);
    const expectInfo = (info: ErrorInfo | undefined) => {
      expect(info?.reason).toBe("CONSISTENCY_CONDITION_FAILED");
      expect(info?.domain).toBe("orisun");
      expect(info?.metadata).toEqual({
        boundary: K,
        marker_commit_position: "0",
        marker_prepare_position: "0",
      });
    };

    beforeAll(async () => {
      await client.saveEvents({ boundary: K, events: [ev("first")] }, { timeoutMs: 10_000 });
    });
    afterEach(async () => {
      expect(await kIds()).toEqual(["first"]);
    });

    it("gRPC (@grpc/grpc-js): in grpc-status-details-bin", async () => {
      const grpcClient = new GrpcClient(`127.0.0.1:${server.port}`, credentials.createInsecure());
      try {
        const error = await new Promise<ServiceError>((found, fail) => {
          grpcClient.makeUnaryRequest(
            "/orisun.v1.EventStore/SaveEvents",
            (m: Uint8Array) => Buffer.from(m),
            (b: Buffer) => b,
            toBinary(SaveEventsRequestSchema, conflicting()),
            (err) => (err ? found(err) : fail(new Error("the append succeeded"))),
          );
        });
        expect(error.code).toBe(grpcStatus.ABORTED);
        const [bin] = error.metadata.get("grpc-status-details-bin");
        expect(bin).toBeInstanceOf(Buffer);
        const details = statusDetails(bin as Buffer);
        expect(details.map((d) => d.typeUrl)).toEqual(["type.googleapis.com/google.rpc.ErrorInfo"]);
        expectInfo(fromBinary(ErrorInfoSchema, details[0]?.value ?? new Uint8Array()));
      } finally {
        grpcClient.close();
      }
    });

    it.each([
      ["Connect binary", () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" })],
      ["gRPC-Web", () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" })],
    ])("%s: findDetails(ErrorInfoSchema)", async (_label, transport) => {
      const other = createClient(EventStore, transport());
      const error = await failure(other.saveEvents(conflicting(), { timeoutMs: 10_000 }));
      expect(Code[error.code]).toBe(Code[Code.Aborted]);
      const infos = error.findDetails(ErrorInfoSchema);
      expect(infos).toHaveLength(1);
      expectInfo(infos[0]);
    });

    it("Connect JSON: a details entry of type google.rpc.ErrorInfo", async () => {
      const res = await fetch(`${server.url}/orisun.v1.EventStore/SaveEvents`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: toJsonString(SaveEventsRequestSchema, conflicting()),
        signal: AbortSignal.timeout(15_000),
      });
      const body = (await res.json()) as {
        code?: string;
        details?: Array<{ type: string; value: string }>;
      };
      expect(res.status).toBe(409);
      expect(body.code).toBe("aborted");
      expect(body.details?.map((d) => d.type)).toEqual(["google.rpc.ErrorInfo"]);
      expectInfo(
        fromBinary(ErrorInfoSchema, Buffer.from(body.details?.[0]?.value ?? "", "base64")),
      );
    });
  });

  it("error messages quote at most 100 characters of a 1 MiB input (256 in all)", async () => {
    const huge = `a${"A".repeat(1024 * 1024)}`;
    const calls: Array<[string, () => Promise<unknown>]> = [
      [
        "boundary",
        () => client.saveEvents({ boundary: huge, events: [ev("h1")] }, { timeoutMs: 20_000 }),
      ],
      ["boundary", () => client.getEvents({ boundary: huge }, { timeoutMs: 20_000 })],
      [
        "subscriber_name",
        async () => {
          for await (const _ of client.subscribeToEvents(
            { boundary: C, subscriberName: huge },
            { timeoutMs: 20_000 },
          ));
        },
      ],
      [
        "consumer_name",
        async () => {
          for await (const _ of client.subscribeToPubSub(
            { subject: "a.b", consumerName: huge },
            { timeoutMs: 20_000 },
          ));
        },
      ],
    ];
    for (const [field, call] of calls) {
      const error = await failure(call());
      expect(Code[error.code], field).toBe(Code[Code.InvalidArgument]);
      expect(error.rawMessage).toContain(field);
      expect(error.rawMessage.length, error.rawMessage.slice(0, 300)).toBeLessThanOrEqual(256);
      // Quoted by the server's own rule, not cut by the last-resort limit.
      expect(error.rawMessage).toContain(`… (${huge.length} characters)`);
    }
    const unknownKey = await rawCall(
      server.url,
      "connect-json",
      "GetEvents",
      json(`{"boundary":"${C}","${huge}":1}`),
    );
    expect(Code[unknownKey.code]).toBe(Code[Code.InvalidArgument]);
    expect(unknownKey.message.length, unknownKey.message.slice(0, 300)).toBeLessThanOrEqual(256);
    expect(await ids()).not.toContain("h1");
  }, 60_000);
});
