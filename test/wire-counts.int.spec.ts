import * as http2 from "node:http2";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import {
  compressionGzip,
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Admin, ImportEventsRequestSchema } from "../gen/orisun/v1/admin_pb.js";
import { EventStore, SaveEventsRequestSchema } from "../gen/orisun/v1/eventstore_pb.js";
import type { RunningApp } from "../server/app.js";
import { startEmbeddedApp } from "./support/embedded-app.js";
import { frame } from "./support/raw-rpc.js";

/**
 * A message's counts are checked on its bytes before it is decoded (server/api/wire-counts.ts), on
 * every transport. The requests here break two rules: their boundary is empty, which the validator
 * checks first (INVALID_ARGUMENT), and they hold one event over ORISUN_MAX_EVENTS_PER_SAVE. Only a
 * check before decoding answers the count (RESOURCE_EXHAUSTED): the validator never saw them.
 */
let lean: RunningApp;
let connect: RunningApp;

beforeAll(async () => {
  const env = { ORISUN_MAX_EVENTS_PER_SAVE: "100" };
  lean = await startEmbeddedApp(env, { grpcUnaryPath: true });
  connect = await startEmbeddedApp(env, { grpcUnaryPath: false });
}, 60_000);

afterAll(async () => {
  await Promise.all([lean?.close(), connect?.close()]);
});

const gzip = { sendCompression: compressionGzip, compressMinBytes: 0 };
const OVER = "events: must contain at most 100 events, got 101";
const tooMany = () =>
  create(SaveEventsRequestSchema, {
    boundary: "",
    events: Array.from({ length: 101 }, () => ({})),
  });

async function refusal(work: Promise<unknown>): Promise<[Code, string]> {
  try {
    await work;
  } catch (error) {
    const e = ConnectError.from(error);
    return [e.code, e.rawMessage];
  }
  throw new Error("the call was not refused");
}

/** A unary gRPC call from raw bytes over HTTP/2: its grpc-status and message. */
function rawGrpc(
  url: string,
  message: Uint8Array,
  path = "/orisun.v1.EventStore/SaveEvents",
): Promise<[string, string]> {
  const session = http2.connect(url);
  const body = frame(message);
  return new Promise((resolve, reject) => {
    const stream = session.request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
    });
    stream.on("error", reject);
    stream.on("trailers", (t) => {
      resolve([String(t["grpc-status"]), decodeURIComponent(String(t["grpc-message"]))]);
      session.close();
    });
    stream.resume();
    stream.end(body);
  });
}

describe("counts are checked before a message is decoded", () => {
  it("on the unary gRPC path and on Connect's gRPC handler", async () => {
    const message = toBinary(SaveEventsRequestSchema, tooMany());
    expect(await rawGrpc(lean.url, message)).toEqual(["8", OVER]);
    expect(await rawGrpc(connect.url, message)).toEqual(["8", OVER]);
  });

  const transports: [string, (url: string) => Transport][] = [
    ["gRPC-Web", (url) => createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1" })],
    [
      "Connect, binary",
      (url) => createConnectTransport({ baseUrl: url, httpVersion: "1.1", useBinaryFormat: true }),
    ],
    ["Connect, JSON", (url) => createConnectTransport({ baseUrl: url, httpVersion: "1.1" })],
    ["gRPC, JSON", (url) => createGrpcTransport({ baseUrl: url, useBinaryFormat: false })],
    // Compressed: a few hundred bytes that decompress into the whole message.
    ["gRPC, gzip", (url) => createGrpcTransport({ baseUrl: url, ...gzip })],
    [
      "gRPC-Web, gzip",
      (url) => createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1", ...gzip }),
    ],
    [
      "Connect, binary, gzip",
      (url) =>
        createConnectTransport({
          baseUrl: url,
          httpVersion: "1.1",
          useBinaryFormat: true,
          ...gzip,
        }),
    ],
    [
      "Connect, JSON, gzip",
      (url) => createConnectTransport({ baseUrl: url, httpVersion: "1.1", ...gzip }),
    ],
  ];
  for (const [name, transport] of transports) {
    it(`over ${name}`, async () => {
      for (const app of [lean, connect]) {
        const store = createClient(EventStore, transport(app.url));
        expect(await refusal(store.saveEvents(tooMany()))).toEqual([Code.ResourceExhausted, OVER]);
      }
    });
  }

  it("on each message of a client stream, named by its index", async () => {
    const admin = createClient(Admin, createGrpcTransport({ baseUrl: connect.url }));
    const messages = async function* () {
      yield create(ImportEventsRequestSchema, { boundary: "", events: [{}] });
      yield create(ImportEventsRequestSchema, {
        boundary: "",
        events: Array.from({ length: 101 }, () => ({})),
      });
    };
    const [code, message] = await refusal(admin.importEvents(messages()));
    expect(code).toBe(Code.ResourceExhausted);
    expect(message).toBe(
      "messages[1].events: must contain at most 100 events (ORISUN_MAX_EVENTS_PER_SAVE), got 101",
    );
  });

  it("a client stream's message that is not protobuf is the client's fault, not the database's", async () => {
    const [status, message] = await rawGrpc(
      connect.url,
      new Uint8Array([0xff, 0xff, 0xff, 0xff]),
      "/orisun.v1.Admin/ImportEvents",
    );
    expect(status).toBe("3");
    expect(message).toContain("the request body is not a valid message");
  });

  it("gRPC-Web's text format is refused before its body is read (Connect does not decode it)", async () => {
    // 2,000,000 empty events, base64 in a gRPC-Web envelope: decoded, it would take hundreds of MB.
    const message = toBinary(
      SaveEventsRequestSchema,
      create(SaveEventsRequestSchema, { events: Array.from({ length: 2_000_000 }, () => ({})) }),
    );
    const framed = Buffer.from(frame(message));
    const rss = process.memoryUsage().rss;
    const response = await fetch(`${connect.url}/orisun.v1.EventStore/SaveEvents`, {
      method: "POST",
      headers: { "content-type": "application/grpc-web-text" },
      body: framed.toString("base64"),
    });
    expect(response.status).toBe(415);
    await response.arrayBuffer();
    expect(process.memoryUsage().rss - rss).toBeLessThan(100 * 1024 * 1024);
  });

  it("and a message within the limits is decoded and served as before", async () => {
    const store = createClient(
      EventStore,
      createConnectTransport({ baseUrl: connect.url, httpVersion: "1.1" }),
    );
    const result = await store.saveEvents({
      boundary: "default",
      events: Array.from({ length: 100 }, () => ({ eventType: "Counted", data: "{}" })),
    });
    expect(result.logPosition?.commitPosition).toBeGreaterThan(0n);
  });
});
