import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type Transport } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ReadForDecisionRequestSchema } from "../../gen/orisun/v1/eventstore_pb.js";
import { basic, bearer, clientsWith, oneEvent } from "../support/auth.js";
import { dropSchema, freshDataDir, freshSchema, PG_URL } from "../support/databases.js";
import { grpcJsEventStore } from "../support/grpc-js.js";
import { type SpawnedServer, spawnServer } from "../support/spawn-server.js";

const ADMIN_PASSWORD = "adm1n-Secret-pw";
const READER_PASSWORD = "reader-Secret-pw";
const APPENDER_PASSWORD = "appender-Secret-pw";
const WRONG_PASSWORD = "wrong-Secret-pw";

type Who = "none" | "wrong" | "revoked" | "reader" | "appender" | "admin";
const WHO: readonly Who[] = ["none", "wrong", "revoked", "reader", "appender", "admin"];
type TransportName = "grpc" | "grpc-web" | "connect-proto" | "connect-json" | "connect-get";

const schema = freshSchema("authm");
let server: SpawnedServer;
const secrets: string[] = [ADMIN_PASSWORD, READER_PASSWORD, APPENDER_PASSWORD, WRONG_PASSWORD];
const headers = {} as Record<Who, string | undefined>;
let counter = 0;
/** Event ids of SaveEvents calls that were allowed: exactly these may be in the store. */
const allowedIds = new Set<string>();
/** User names of allowed CreateUser calls. */
const allowedUsers = new Set<string>(["admin", "reader", "appender"]);

function transports(url: string): Record<TransportName, Transport> {
  return {
    grpc: createGrpcTransport({ baseUrl: url }),
    "grpc-web": createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1" }),
    "connect-proto": createConnectTransport({
      baseUrl: url,
      httpVersion: "1.1",
      useBinaryFormat: true,
    }),
    "connect-json": createConnectTransport({
      baseUrl: url,
      httpVersion: "1.1",
      useBinaryFormat: false,
    }),
    "connect-get": createConnectTransport({ baseUrl: url, httpVersion: "1.1", useHttpGet: true }),
  };
}

async function outcome(work: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await work;
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

async function query(sql: string, params: unknown[] = []): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: PG_URL });
  await client.connect();
  try {
    return await client.query(sql, params);
  } finally {
    await client.end();
  }
}

type Rpc = {
  readonly name: string;
  /**
   * Not implemented on this branch yet (ReadForDecision lands with the decisions work): once past
   * authorization it answers UNIMPLEMENTED, which counts as let through.
   */
  readonly pending?: boolean;
  readonly allowed: readonly Who[];
  run(c: ReturnType<typeof clientsWith>, who: Who): Promise<unknown>;
};

/** A stream is allowed once its first message (or 400 ms of silence) came without an error. */
async function firstOrQuiet(stream: AsyncIterable<unknown>, stop: AbortController): Promise<void> {
  const timer = setTimeout(() => stop.abort(), 400);
  try {
    for await (const _ of stream) break;
  } catch (error) {
    if (!stop.signal.aborted) throw error;
  } finally {
    clearTimeout(timer);
    stop.abort();
  }
}

const RPCS: readonly Rpc[] = [
  {
    name: "SaveEvents",
    allowed: ["appender", "admin"],
    async run(c, who) {
      const id = `m-${who}-${++counter}`;
      await c.store.saveEvents(oneEvent("orders_a", id), { headers: c.headers });
      allowedIds.add(id);
    },
  },
  {
    name: "GetEvents",
    allowed: ["reader", "admin"],
    run: (c) => c.store.getEvents({ boundary: "orders_a", count: 5 }, { headers: c.headers }),
  },
  {
    name: "ReadForDecision",
    pending: true,
    allowed: ["reader", "admin"],
    run: (c) =>
      c.store.readForDecision(
        create(ReadForDecisionRequestSchema, {
          boundary: "orders_a",
          queries: [{ criteria: { criteria: [{ eventTypes: ["Thing"] }] } }],
        }),
        { headers: c.headers },
      ),
  },
  {
    name: "SubscribeToEvents",
    allowed: ["reader", "admin"],
    run(c) {
      const stop = new AbortController();
      return firstOrQuiet(
        c.store.subscribeToEvents(
          { boundary: "orders_a" },
          { headers: c.headers, signal: stop.signal },
        ),
        stop,
      );
    },
  },
  {
    name: "PublishToPubSub",
    allowed: ["appender", "admin"],
    run: (c) =>
      c.store.publishToPubSub(
        { subject: "orders.created", data: new Uint8Array([1]) },
        { headers: c.headers },
      ),
  },
  {
    name: "SubscribeToPubSub",
    allowed: ["reader", "admin"],
    run(c) {
      const stop = new AbortController();
      return firstOrQuiet(
        c.store.subscribeToPubSub(
          { subject: "orders.>" },
          { headers: c.headers, signal: stop.signal },
        ),
        stop,
      );
    },
  },
  {
    name: "WhoAmI",
    allowed: ["reader", "appender", "admin"],
    run: (c) => c.admin.whoAmI({}, { headers: c.headers }),
  },
  {
    name: "ListUsers",
    allowed: ["admin"],
    run: (c) => c.admin.listUsers({}, { headers: c.headers }),
  },
  {
    name: "CreateUser",
    allowed: ["admin"],
    async run(c, who) {
      const name = `u-${who}-${++counter}`;
      await c.admin.createUser({ name, password: "another-pw-1" }, { headers: c.headers });
      allowedUsers.add(name);
    },
  },
  {
    name: "CreateApiKey",
    allowed: ["admin"],
    run: (c) => c.admin.createApiKey({ user: "appender", name: "k" }, { headers: c.headers }),
  },
];

beforeAll(async () => {
  server = await spawnServer({
    ORISUN_PG_URL: PG_URL,
    ORISUN_PG_SCHEMA: schema,
    ORISUN_DATA_DIR: freshDataDir(),
    ORISUN_AUTH: "on",
    ORISUN_ADMIN_PASSWORD: ADMIN_PASSWORD,
  });
  const admin = clientsWith(
    createGrpcTransport({ baseUrl: server.url }),
    basic("admin", ADMIN_PASSWORD),
  );
  const opts = { headers: admin.headers };
  await admin.admin.createUser(
    {
      name: "reader",
      password: READER_PASSWORD,
      grants: [
        { boundary: "orders_*", access: "read" },
        { subject: "orders.>", access: "subscribe" },
      ],
    },
    opts,
  );
  await admin.admin.createUser(
    {
      name: "appender",
      password: APPENDER_PASSWORD,
      grants: [
        { boundary: "orders_a", access: "append" },
        { subject: "orders.created", access: "publish" },
      ],
    },
    opts,
  );
  const revoked = await admin.admin.createApiKey({ user: "reader", name: "old" }, opts);
  secrets.push(revoked.secret);
  await admin.admin.revokeApiKey({ id: revoked.key?.id ?? "" }, opts);
  await admin.store.saveEvents(oneEvent("orders_a", "seed"), opts);
  allowedIds.add("seed");
  headers.none = undefined;
  headers.wrong = basic("reader", WRONG_PASSWORD);
  headers.revoked = bearer(revoked.secret);
  headers.reader = basic("reader", READER_PASSWORD);
  headers.appender = basic("appender", APPENDER_PASSWORD);
  headers.admin = basic("admin", ADMIN_PASSWORD);
}, 90_000);

afterAll(async () => {
  await server?.stop();
  await dropSchema(schema);
});

describe("the permission matrix: every RPC × principal × transport", () => {
  for (const transportName of [
    "grpc",
    "grpc-web",
    "connect-proto",
    "connect-json",
    "connect-get",
  ] as const) {
    it(`answers exactly as API.md says over ${transportName}`, async () => {
      const transport = transports(server.url)[transportName];
      const seen: string[] = [];
      const expected: string[] = [];
      for (const rpc of RPCS) {
        for (const who of WHO) {
          const want =
            who === "none" || who === "wrong" || who === "revoked"
              ? Code.Unauthenticated
              : rpc.allowed.includes(who)
                ? "ok"
                : Code.PermissionDenied;
          expected.push(`${rpc.name} ${who} ${want === "ok" ? "ok" : Code[want]}`);
          let got = await outcome(rpc.run(clientsWith(transport, headers[who]), who));
          if (rpc.pending && got === Code.Unimplemented) got = "ok";
          seen.push(`${rpc.name} ${who} ${got === "ok" ? "ok" : Code[got]}`);
        }
      }
      expect(seen).toEqual(expected);
    }, 120_000);
  }

  it("answers the same over @grpc/grpc-js, with grpc-status 16 and 7", async () => {
    const client = grpcJsEventStore(server.port);
    const call = (method: string, req: object, who: Who): Promise<number> =>
      new Promise((done) => {
        const md = new grpc.Metadata();
        const h = headers[who];
        if (h !== undefined) md.set("authorization", h);
        const fn = (client as unknown as Record<string, (...a: unknown[]) => void>)[method];
        fn?.call(
          client,
          req,
          md,
          { deadline: Date.now() + 15_000 },
          (err: grpc.ServiceError | null) => done(err ? err.code : 0),
        );
      });
    try {
      const codes: Record<string, number[]> = {};
      for (const who of WHO) {
        const id = `grpcjs-${who}`;
        const save = await call(
          "SaveEvents",
          { boundary: "orders_a", events: [{ event_id: id, event_type: "Thing", data: "{}" }] },
          who,
        );
        if (save === 0) allowedIds.add(id);
        codes[who] = [save, await call("GetEvents", { boundary: "orders_a", count: 1 }, who)];
      }
      expect(codes).toEqual({
        none: [16, 16],
        wrong: [16, 16],
        revoked: [16, 16],
        reader: [7, 0],
        appender: [0, 7],
        admin: [0, 0],
      });
    } finally {
      client.close();
    }
  }, 60_000);

  it("gives plain HTTP callers 401 and 403 with a JSON code, and names the permission", async () => {
    const post = (who: Who, body: object) =>
      fetch(`${server.url}/orisun.v1.EventStore/SaveEvents`, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          ...(headers[who] === undefined ? {} : { authorization: headers[who] as string }),
        },
        body: JSON.stringify(body),
      });
    const body = {
      boundary: "orders_a",
      events: [{ event_id: "http-x", event_type: "T", data: "{}" }],
    };
    const none = await post("none", body);
    expect(none.status).toBe(401);
    expect(await none.json()).toMatchObject({ code: "unauthenticated" });
    const wrong = await post("wrong", body);
    expect(wrong.status).toBe(401);
    // Nothing said about which part was wrong: the same answer as for no credentials at all.
    const noneAgain = await post("none", body);
    expect(await wrong.json()).toEqual(await noneAgain.json());
    const reader = await post("reader", body);
    expect(reader.status).toBe(403);
    const denied = (await reader.json()) as { code: string; message: string };
    expect(denied.code).toBe("permission_denied");
    expect(denied.message).toContain("append");
    expect(denied.message).toContain("orders_a");
  });

  it("wrote nothing for any refused call", async () => {
    const events = await query(`SELECT event_id FROM "${schema}".orisun_events ORDER BY event_id`);
    expect(new Set(events.rows.map((r) => r.event_id as string))).toEqual(allowedIds);
    const users = await query(`SELECT name FROM "${schema}".orisun_users`);
    expect(new Set(users.rows.map((r) => r.name as string))).toEqual(allowedUsers);
  });
});

describe("the authorization header, fuzzed", () => {
  it("always gets 401, never a crash", async () => {
    const cases: (string | string[])[] = [
      "",
      " ",
      "Basic",
      "Basic ",
      `Basic ${"A".repeat(10_000)}`,
      "Basic !!!not-base64!!!",
      "Basic ====",
      `Basic ${Buffer.from([0xff, 0xfe, 0x3a, 0x80]).toString("base64")}`,
      `Basic ${Buffer.from("no-colon-here").toString("base64")}`,
      `Basic ${Buffer.from(":only-password").toString("base64")}`,
      "Bearer",
      "Bearer osk_zz_zz",
      `Bearer osk_0123456789abcdef_${"A".repeat(43)}`,
      "Digest username=admin",
      "basic",
      `${"x".repeat(5000)}`,
      [headers.admin as string, headers.admin as string],
      [headers.reader as string, "Bearer something"],
    ];
    for (const value of cases) {
      const h = new Headers({ "content-type": "application/json" });
      for (const v of Array.isArray(value) ? value : [value]) h.append("authorization", v);
      const res = await fetch(`${server.url}/orisun.v1.Admin/WhoAmI`, {
        method: "POST",
        headers: h,
        body: "{}",
      });
      expect(res.status, JSON.stringify(value).slice(0, 80)).toBe(401);
      await res.arrayBuffer();
    }
    // Beyond Node's header limit the HTTP parser answers 431 before any handler.
    const huge = await fetch(`${server.url}/orisun.v1.Admin/WhoAmI`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        authorization: `Basic ${"A".repeat(100_000)}`,
      },
      body: "{}",
    });
    expect(huge.status).toBe(431);
    // Non-UTF-8 bytes in the header itself, over HTTP/2 (gRPC).
    const transport = createGrpcTransport({ baseUrl: server.url });
    const c = clientsWith(transport, "Basic \u00ff\u00fe");
    expect(await outcome(c.admin.whoAmI({}, { headers: c.headers }))).toBe(Code.Unauthenticated);
    // Still serving.
    const admin = clientsWith(transport, headers.admin);
    expect((await admin.admin.whoAmI({}, { headers: admin.headers })).admin).toBe(true);
  }, 60_000);

  it("never writes a password or key secret to the log, and logs each denial as one JSON line", async () => {
    const log = server.output();
    for (const secret of secrets) expect(log.includes(secret), "a secret in the log").toBe(false);
    for (const secret of secrets) {
      expect(log.includes(Buffer.from(secret).toString("base64"))).toBe(false);
    }
    const denials = log
      .split("\n")
      .filter((line) => line.includes("permission denied"))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(denials.length).toBeGreaterThan(10);
    for (const d of denials) {
      expect(typeof d.principal).toBe("string");
      expect(typeof d.method).toBe("string");
    }
    expect(denials).toContainEqual(
      expect.objectContaining({
        principal: "reader",
        method: "orisun.v1.EventStore/SaveEvents",
        boundary: "orders_a",
      }),
    );
    expect(denials).toContainEqual(
      expect.objectContaining({
        principal: "reader",
        method: "orisun.v1.EventStore/PublishToPubSub",
        subject: "orders.created",
      }),
    );
  });
});
