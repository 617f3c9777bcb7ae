import * as http2 from "node:http2";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  PublishRequestSchema,
  SaveEventsRequestSchema,
  WriteResultSchema,
} from "../gen/orisun/v1/eventstore_pb.js";
import type { RunningApp } from "../server/app.js";
import { basic } from "./support/auth.js";
import { startEmbeddedApp } from "./support/embedded-app.js";
import { frame } from "./support/raw-rpc.js";

/**
 * SaveEvents and PublishToPubSub over binary gRPC are served straight from the HTTP/2 stream
 * (grpc-unary-path.ts); with `grpcUnaryPath: false` the same server hands them to Fastify and
 * Connect. Every answer, right or wrong input, must be the same from both: header and trailer
 * names, status, message, details and body.
 */
const MAX_REQUEST_BYTES = 4096;
const ADMIN_PASSWORD = "unary-Admin-pw";
let lean: RunningApp;
let connect: RunningApp;

function start(grpcUnaryPath: boolean): Promise<RunningApp> {
  return startEmbeddedApp(
    {
      ORISUN_AUTH: "on",
      ORISUN_ADMIN_PASSWORD: ADMIN_PASSWORD,
      ORISUN_MAX_REQUEST_BYTES: String(MAX_REQUEST_BYTES),
      ORISUN_MAX_MESSAGE_BYTES: "1024",
    },
    { grpcUnaryPath },
  );
}

beforeAll(async () => {
  [lean, connect] = await Promise.all([start(true), start(false)]);
}, 60_000);

afterAll(async () => {
  await Promise.all([lean?.close(), connect?.close()]);
});

interface Answer {
  /** The names of every response header and trailer. */
  names: string[];
  status: number | undefined;
  contentType: string | undefined;
  grpcStatus: string | undefined;
  grpcMessage: string | undefined;
  details: string | undefined;
  body: Buffer;
}

const SAVE = "/orisun.v1.EventStore/SaveEvents";
const PUBLISH = "/orisun.v1.EventStore/PublishToPubSub";

/**
 * One POST of `body` as it is to `path`, over a connection of its own; with `pauseMs`, its first
 * 7 bytes, then the rest that much later.
 */
async function call(
  app: RunningApp,
  body: Buffer,
  headers: Record<string, string> = {},
  path = SAVE,
  pauseMs?: number,
): Promise<Answer> {
  const session = http2.connect(app.url);
  try {
    return await new Promise<Answer>((resolve, reject) => {
      const stream = session.request({
        ":method": "POST",
        ":path": path,
        "content-type": "application/grpc",
        te: "trailers",
        authorization: basic("admin", ADMIN_PASSWORD),
        ...headers,
      });
      let head: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      stream.on("response", (h) => {
        head = h;
      });
      stream.on("trailers", (t) => {
        trailers = t;
      });
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("error", reject);
      stream.on("close", () => {
        const all = { ...head, ...trailers };
        const text = (key: string) => {
          const value = all[key];
          return value === undefined ? undefined : String(value);
        };
        resolve({
          names: Object.keys(all).sort(),
          status: Number(head[":status"]),
          contentType: text("content-type"),
          grpcStatus: text("grpc-status"),
          grpcMessage: text("grpc-message"),
          details: text("grpc-status-details-bin"),
          body: Buffer.concat(chunks),
        });
      });
      if (pauseMs === undefined) stream.end(body);
      else {
        stream.write(body.subarray(0, 7));
        setTimeout(() => stream.end(body.subarray(7)), pauseMs);
      }
    });
  } finally {
    session.close();
  }
}

const envelope = (message: Uint8Array, flags = 0) => Buffer.from(frame(message, flags));

function save(boundary: string, tag: string, condition?: { after: bigint }): Uint8Array {
  return toBinary(
    SaveEventsRequestSchema,
    create(SaveEventsRequestSchema, {
      boundary,
      events: [
        {
          eventId: crypto.randomUUID(),
          eventType: "Deposited",
          tags: [{ key: "account", value: tag }],
          data: '{"amount":1}',
        },
      ],
      ...(condition && {
        consistencyCondition: {
          consistencyMarker: {
            commitPosition: condition.after,
            preparePosition: condition.after,
          },
          criteria: { criteria: [{ tags: [{ key: "account", value: tag }] }] },
        },
      }),
    }),
  );
}

function publish(subject: string, data: Uint8Array): Uint8Array {
  return toBinary(PublishRequestSchema, create(PublishRequestSchema, { subject, data }));
}

/** The same call on both servers, one after the other; the two answers. */
async function both(body: Buffer, headers?: Record<string, string>, path = SAVE, pauseMs?: number) {
  const a = await call(lean, body, headers, path, pauseMs);
  const b = await call(connect, body, headers, path, pauseMs);
  return [a, b] as const;
}

describe("SaveEvents over binary gRPC without Fastify and Connect's pipeline", () => {
  it("appends and answers as Connect does", async () => {
    const [a, b] = await both(envelope(save("default", "acct-1")));
    expect(a.grpcStatus).toBe("0");
    expect({ ...a, body: undefined }).toEqual({ ...b, body: undefined });
    const position = fromBinary(WriteResultSchema, a.body.subarray(5)).logPosition;
    expect(position?.commitPosition).toBeGreaterThan(0n);
    expect(a.body.readUInt32BE(1)).toBe(a.body.length - 5);
    expect(fromBinary(WriteResultSchema, b.body.subarray(5)).logPosition).toEqual(position);
  });

  it("refuses a failed condition with ABORTED and the same ErrorInfo", async () => {
    await both(envelope(save("default", "acct-2")));
    const [a, b] = await both(envelope(save("default", "acct-2", { after: 0n })));
    expect(a.grpcStatus).toBe("10");
    expect(a.details).toBeDefined();
    expect(a).toEqual(b);
  });

  const wrong: [string, () => Buffer, Record<string, string>?][] = [
    ["a request that breaks a rule", () => envelope(save("", "acct-3"))],
    ["bytes that are not protobuf", () => envelope(Buffer.from([0xff, 0xff, 0xff, 0xff]))],
    [
      "a message over ORISUN_MAX_REQUEST_BYTES",
      () => envelope(Buffer.alloc(MAX_REQUEST_BYTES + 1, 0)),
    ],
    ["a compressed envelope without grpc-encoding", () => envelope(save("default", "c"), 1)],
    [
      "two messages",
      () => Buffer.concat([envelope(save("default", "d")), envelope(save("default", "e"))]),
    ],
    ["no message", () => Buffer.alloc(0)],
    ["an incomplete envelope", () => envelope(save("default", "f")).subarray(0, 9)],
    ["a bad grpc-timeout", () => envelope(save("default", "g")), { "grpc-timeout": "soon" }],
    ["no credentials", () => envelope(save("default", "h")), { authorization: "" }],
    [
      "a wrong password",
      () => envelope(save("default", "i")),
      { authorization: basic("admin", "not-the-password") },
    ],
  ];
  for (const [name, body, headers] of wrong) {
    it(`answers ${name} with Connect's status and message`, async () => {
      const [a, b] = await both(body(), headers);
      expect(a.grpcStatus).not.toBe("0");
      expect(a).toEqual(b);
    });
  }

  it("answers bytes that are not protobuf with INVALID_ARGUMENT also when the deadline has passed", async () => {
    const junk = envelope(Buffer.from([0x17, 0x01]));
    for (const headers of [{ "grpc-timeout": "0n" }, { "grpc-timeout": "1u" }]) {
      const [a, b] = await both(junk, headers);
      expect(a.grpcStatus).toBe("3");
      expect(decodeURIComponent(a.grpcMessage ?? "")).toContain(
        "the request body is not a valid message",
      );
      expect(a).toEqual(b);
    }
    // The deadline passes while the body is still arriving.
    const [a, b] = await both(junk, { "grpc-timeout": "50m" }, SAVE, 200);
    expect(a.grpcStatus).toBe("3");
    expect(a).toEqual(b);
  });

  it("refuses a deadline longer than Node's timers take with INVALID_ARGUMENT, and takes the longest", async () => {
    for (const timeout of ["597H", "35792M", "2147484S", "99999999H"]) {
      const [a, b] = await both(envelope(save("default", "far")), { "grpc-timeout": timeout });
      expect(a.grpcStatus).toBe("3");
      expect(decodeURIComponent(a.grpcMessage ?? "")).toContain("must be <= 2147483647");
      expect(a).toEqual(b);
    }
    // This path refuses such a deadline without arming it (Connect's own path still arms it, and
    // Node warns of a timer it cannot hold).
    const warnings: string[] = [];
    const onWarning = (warning: Error) => warnings.push(warning.name);
    process.on("warning", onWarning);
    try {
      const far = await call(lean, envelope(save("default", "far")), { "grpc-timeout": "597H" });
      expect(far.grpcStatus).toBe("3");
      await new Promise((r) => setTimeout(r, 50));
    } finally {
      process.off("warning", onWarning);
    }
    expect(warnings).not.toContain("TimeoutOverflowWarning");
    const [a, b] = await both(envelope(save("", "x")), { "grpc-timeout": "596H" });
    // Served (and refused by validation, so that nothing is written): not a deadline.
    expect(a.grpcStatus).toBe("3");
    expect(decodeURIComponent(a.grpcMessage ?? "")).not.toContain("must be <=");
    expect(a).toEqual(b);
  });

  it("wrote nothing for any refused call: each store holds the same two events", async () => {
    for (const app of [lean, connect]) {
      const events = await app.store.read({
        boundary: "default",
        query: [],
        count: 100,
        direction: "asc",
      });
      expect(events.map((e) => e.tags[0]?.value)).toEqual(["acct-1", "acct-2"]);
    }
  });

  it("publishes to pub/sub and refuses a bad subject or a message too large as Connect does", async () => {
    const [ok, okConnect] = await both(
      envelope(publish("orders.created", new Uint8Array(8))),
      {},
      PUBLISH,
    );
    expect(ok.grpcStatus).toBe("0");
    expect(ok).toEqual(okConnect);
    for (const body of [
      envelope(publish("orders.*", new Uint8Array(8))),
      envelope(publish("orders.created", new Uint8Array(2048))),
      envelope(Buffer.from([0x0a, 0xff])),
    ]) {
      const [a, b] = await both(body, {}, PUBLISH);
      expect(a.grpcStatus).not.toBe("0");
      expect(a).toEqual(b);
    }
  });

  it("answers a client that accepts gzip (as grpc-js does) as Connect does", async () => {
    const accepts = { "grpc-accept-encoding": "identity,deflate,gzip" };
    const [a, b] = await both(envelope(save("default", "acct-gz")), accepts);
    expect(a.names).toContain("grpc-encoding");
    expect({ ...a, body: undefined }).toEqual({ ...b, body: undefined });
    expect(a.body[0]).toBe(b.body[0]);
    const [c, d] = await both(envelope(save("", "x")), accepts);
    expect(c.grpcStatus).toBe("3");
    expect(c).toEqual(d);
  });

  it("answers a call whose deadline passes before its body is in as Connect does", async () => {
    const body = envelope(save("default", "late"));
    const [a, b] = await both(body, { "grpc-timeout": "100m" }, SAVE, 400);
    expect(a.grpcStatus).toBe("4");
    expect(a).toEqual(b);
    // Nothing was stored: the same append with a condition on its tag from the start succeeds.
    const [c] = await both(envelope(save("default", "late", { after: 0n })));
    expect(c.grpcStatus).toBe("0");
  });

  it("lets go of a call whose client cancels mid-body, and goes on serving", async () => {
    const session = http2.connect(lean.url);
    const stream = session.request({
      ":method": "POST",
      ":path": SAVE,
      "content-type": "application/grpc",
      authorization: basic("admin", ADMIN_PASSWORD),
    });
    const closed = new Promise((resolve) => stream.on("close", resolve));
    stream.on("error", () => {});
    stream.write(envelope(save("default", "cancelled")).subarray(0, 12));
    await new Promise((resolve) => setTimeout(resolve, 50));
    stream.close(http2.constants.NGHTTP2_CANCEL);
    await closed;
    session.close();
    const after = await call(lean, envelope(save("", "x")));
    expect(after.grpcStatus).toBe("3");
  });

  it("leaves JSON, compression and gRPC-Web to Connect", async () => {
    const json = await call(lean, Buffer.alloc(0), { "content-type": "application/grpc+json" });
    expect(json.contentType).toBe("application/grpc+json");
    const web = await call(lean, envelope(save("default", "w")), {
      "content-type": "application/grpc-web+proto",
    });
    expect(web.contentType).toBe("application/grpc-web+proto");
  });
});
