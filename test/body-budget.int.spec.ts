import * as http from "node:http";
import * as http2 from "node:http2";
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ServerReflection,
  ServerReflectionRequestSchema,
} from "../gen/grpc/reflection/v1/reflection_pb.js";
import { EventStore, SaveEventsRequestSchema } from "../gen/orisun/v1/eventstore_pb.js";
import type { RunningApp } from "../server/app.js";
import { UNAUTHENTICATED_MESSAGE } from "../server/auth/auth-error.js";
import { basic, bearer, clientsWith, grpcTransport, oneEvent } from "./support/auth.js";
import { startEmbeddedApp } from "./support/embedded-app.js";
import { frame } from "./support/raw-rpc.js";

/**
 * Request bodies still arriving, on the unary gRPC path and through Connect alike:
 * - a call without valid credentials is refused from its headers, before any of its body is read,
 *   and its stream is reset once answered;
 * - bodies are bounded per connection and per process (ORISUN_MAX_CONNECTION_BODY_BYTES,
 *   ORISUN_MAX_BODY_BYTES): a client that opens streams and never finishes their bodies is refused
 *   once it holds the budget, the refused stream is reset, and what it held is let go when it
 *   gives up;
 * - a body still arriving after ORISUN_BODY_TIMEOUT is refused with DEADLINE_EXCEEDED, reset, and
 *   let go.
 */
const PASSWORD = "budget-Admin-pw";
const servers: { name: string; app?: RunningApp; grpcUnaryPath: boolean }[] = [
  { name: "the unary gRPC path", grpcUnaryPath: true },
  { name: "Connect", grpcUnaryPath: false },
];

beforeAll(async () => {
  for (const server of servers) {
    server.app = await startEmbeddedApp(
      {
        ORISUN_AUTH: "on",
        ORISUN_ADMIN_PASSWORD: PASSWORD,
        ORISUN_MAX_REQUEST_BYTES: "4096",
        ORISUN_MAX_CONNECTION_BODY_BYTES: "8192",
        ORISUN_MAX_BODY_BYTES: "16384",
        ORISUN_HEADERS_TIMEOUT: "1s",
        ORISUN_BODY_TIMEOUT: "2s",
      },
      { grpcUnaryPath: server.grpcUnaryPath },
    );
  }
}, 60_000);

afterAll(async () => {
  await Promise.all(servers.map((s) => s.app?.close()));
});

const SAVE = "/orisun.v1.EventStore/SaveEvents";

interface Unfinished {
  /** grpc-status and grpc-message once answered; undefined while it waits. */
  answer: Promise<{ status: string | undefined; message: string }>;
  /** Resolves when the stream closes: the RST_STREAM code the server sent (or the client's). */
  closed: Promise<number>;
  cancel(): void;
}

const OWNER = basic("admin", PASSWORD);

/** A SaveEvents whose envelope announces 4,000 bytes and sends 3,000 of them, never ending. */
function unfinished(session: http2.ClientHttp2Session, authorization?: string): Unfinished {
  const stream = session.request({
    ":method": "POST",
    ":path": SAVE,
    "content-type": "application/grpc",
    te: "trailers",
    ...(authorization === undefined ? {} : { authorization }),
  });
  stream.on("error", () => {});
  const answer = new Promise<{ status: string | undefined; message: string }>((resolve) => {
    let status: string | undefined;
    let message = "";
    const read = (h: http2.IncomingHttpHeaders) => {
      if (h["grpc-message"] !== undefined) message = decodeURIComponent(String(h["grpc-message"]));
      if (h["grpc-status"] !== undefined) {
        status = String(h["grpc-status"]);
        resolve({ status, message });
      }
    };
    stream.on("response", read);
    stream.on("trailers", read);
    stream.on("close", () => resolve({ status, message }));
    stream.resume();
  });
  const header = Buffer.alloc(5);
  header.writeUInt32BE(4000, 1);
  stream.write(Buffer.concat([header, Buffer.alloc(3000, 0x41)]));
  const closed = new Promise<number>((resolve) =>
    stream.on("close", () => resolve(stream.rstCode)),
  );
  return { answer, closed, cancel: () => stream.close(http2.constants.NGHTTP2_CANCEL) };
}

/** A complete, valid SaveEvents with credentials; its grpc-status. */
function save(session: http2.ClientHttp2Session): Promise<string | undefined> {
  const message = toBinary(
    SaveEventsRequestSchema,
    create(SaveEventsRequestSchema, {
      boundary: "default",
      events: [{ eventId: crypto.randomUUID(), eventType: "Saved", data: "{}" }],
    }),
  );
  const body = frame(message);
  return new Promise((resolve, reject) => {
    const stream = session.request({
      ":method": "POST",
      ":path": SAVE,
      "content-type": "application/grpc",
      te: "trailers",
      authorization: basic("admin", PASSWORD),
    });
    let status: string | undefined;
    stream.on("trailers", (t) => {
      status = t["grpc-status"] === undefined ? undefined : String(t["grpc-status"]);
    });
    stream.on("response", (h) => {
      if (h["grpc-status"] !== undefined) status = String(h["grpc-status"]);
    });
    stream.on("error", reject);
    stream.on("data", () => {});
    stream.on("close", () => resolve(status));
    stream.end(body);
  });
}

const pending = (p: Promise<unknown>, ms = 300) =>
  Promise.race([p.then(() => false), new Promise((r) => setTimeout(() => r(true), ms))]);

const within = <T>(p: Promise<T>, ms: number) =>
  Promise.race([
    p,
    new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`not within ${ms} ms`)), ms),
    ),
  ]);

describe.each(servers)("request bodies still arriving, on $name", (server) => {
  it("a call without valid credentials is refused before its body is read, and its stream reset", async () => {
    const app = server.app as RunningApp;
    const session = http2.connect(app.url);
    try {
      // Five streams of 3,005 bytes each would be over the connection's 8,192 if any were read.
      const calls = [
        ...Array.from({ length: 4 }, () => unfinished(session)),
        unfinished(session, basic("admin", "not-the-password")),
      ];
      for (const call of calls) {
        expect(await call.answer).toEqual({ status: "16", message: UNAUTHENTICATED_MESSAGE });
        // Reset with NO_ERROR after the answer: the client never ended its side.
        expect(await within(call.closed, 2_000)).toBe(http2.constants.NGHTTP2_NO_ERROR);
      }
      expect(app.bodies.held).toBe(0);
      expect(await save(session)).toBe("0");
    } finally {
      session.destroy();
    }
  });

  it("a connection is refused past its budget, the refused stream is reset, and it goes on once it lets go", async () => {
    const app = server.app as RunningApp;
    const session = http2.connect(app.url);
    try {
      const held = [unfinished(session, OWNER), unfinished(session, OWNER)];
      await new Promise((r) => setTimeout(r, 200));
      for (const h of held) expect(await pending(h.answer)).toBe(true);
      expect(app.bodies.held).toBe(2 * 3005);
      const third = unfinished(session, OWNER);
      const refused = await third.answer;
      expect(refused.status).toBe("8");
      expect(refused.message).toContain("ORISUN_MAX_CONNECTION_BODY_BYTES (8192 bytes)");
      expect(await within(third.closed, 2_000)).toBe(http2.constants.NGHTTP2_NO_ERROR);
      for (const h of held) h.cancel();
      await Promise.all(held.map((h) => h.answer));
      expect(await save(session)).toBe("0");
    } finally {
      session.destroy();
    }
  });

  it("the process is refused past its budget, all connections together", async () => {
    const sessions = Array.from({ length: 3 }, () => http2.connect((server.app as RunningApp).url));
    try {
      // Two per connection: 5 × 3,005 bytes fit in 16,384, the sixth does not.
      const held: Unfinished[] = [];
      for (const session of sessions.slice(0, 2)) {
        held.push(unfinished(session, OWNER), unfinished(session, OWNER));
      }
      held.push(unfinished(sessions[2] as http2.ClientHttp2Session, OWNER));
      await new Promise((r) => setTimeout(r, 200));
      for (const h of held) expect(await pending(h.answer)).toBe(true);
      const last = unfinished(sessions[2] as http2.ClientHttp2Session, OWNER);
      const sixth = await last.answer;
      expect(sixth.status).toBe("8");
      expect(sixth.message).toContain("ORISUN_MAX_BODY_BYTES (16384 bytes)");
      for (const h of held) h.cancel();
      await Promise.all(held.map((h) => h.answer));
      expect(await save(sessions[2] as http2.ClientHttp2Session)).toBe("0");
    } finally {
      for (const s of sessions) s.destroy();
    }
  });

  it("a call whose key is revoked while its body arrives is refused, and stores nothing", async () => {
    const app = server.app as RunningApp;
    const admin = clientsWith(grpcTransport(app.url), OWNER);
    const { key, secret } = await admin.admin.createApiKey(
      { user: "admin", name: `mid-body-${server.grpcUnaryPath}` },
      { headers: admin.headers },
    );
    const id = crypto.randomUUID();
    const message = toBinary(SaveEventsRequestSchema, oneEvent("default", id));
    const body = frame(message);
    const session = http2.connect(app.url);
    try {
      const stream = session.request({
        ":method": "POST",
        ":path": SAVE,
        "content-type": "application/grpc",
        te: "trailers",
        authorization: bearer(secret),
      });
      stream.on("error", () => {});
      const status = new Promise<string | undefined>((resolve) => {
        let got: string | undefined;
        const read = (h: http2.IncomingHttpHeaders) => {
          if (h["grpc-status"] !== undefined) got = String(h["grpc-status"]);
        };
        stream.on("response", read);
        stream.on("trailers", read);
        stream.on("close", () => resolve(got));
        stream.resume();
      });
      stream.write(body.subarray(0, 10));
      // Admitted from its headers by now; then its key goes.
      await new Promise((r) => setTimeout(r, 200));
      await admin.admin.revokeApiKey({ id: key?.id ?? "" }, { headers: admin.headers });
      stream.end(body.subarray(10));
      expect(await status).toBe("16");
      const read = await admin.store.getEvents(
        { boundary: "default", count: 10_000 },
        { headers: admin.headers },
      );
      expect(read.events.map((e) => e.eventId)).not.toContain(id);
    } finally {
      session.destroy();
    }
  });

  it("a bidi stream's body lasts as long as its call, past ORISUN_BODY_TIMEOUT", async () => {
    const app = server.app as RunningApp;
    const reflection = createClient(ServerReflection, grpcTransport(app.url));
    const requests = async function* () {
      yield create(ServerReflectionRequestSchema, {
        messageRequest: { case: "listServices", value: "" },
      });
      await new Promise((r) => setTimeout(r, 2_500));
      yield create(ServerReflectionRequestSchema, {
        messageRequest: { case: "listServices", value: "" },
      });
    };
    let answers = 0;
    for await (const answer of reflection.serverReflectionInfo(requests())) {
      expect(answer.messageResponse.case).toBe("listServicesResponse");
      answers++;
    }
    expect(answers).toBe(2);
  });

  it("a body still arriving after ORISUN_BODY_TIMEOUT is refused with DEADLINE_EXCEEDED, reset and let go", async () => {
    const app = server.app as RunningApp;
    const session = http2.connect(app.url);
    try {
      const started = performance.now();
      const slow = unfinished(session, OWNER);
      const answer = await within(slow.answer, 5_000);
      expect(performance.now() - started).toBeGreaterThanOrEqual(1_900);
      expect(answer.status).toBe("4");
      expect(answer.message).toContain("ORISUN_BODY_TIMEOUT (2000 ms)");
      expect(await within(slow.closed, 2_000)).toBe(http2.constants.NGHTTP2_NO_ERROR);
      expect(app.bodies.held).toBe(0);
      expect(await save(session)).toBe("0");
    } finally {
      session.destroy();
    }
  });
});

describe("request bodies still arriving over HTTP/1.1", () => {
  it("a call refused before the end of its body is answered at once, and its connection ends at ORISUN_BODY_TIMEOUT", async () => {
    const app = servers[1]?.app as RunningApp;
    const started = performance.now();
    const req = http.request(`${app.url}/orisun.v1.EventStore/SaveEvents`, {
      method: "POST",
      headers: { "content-type": "application/json", "transfer-encoding": "chunked" },
    });
    req.on("error", () => {});
    req.write('{"boundary":"default","events":[');
    const res = await within(
      new Promise<http.IncomingMessage>((r) => req.on("response", r)),
      1_000,
    );
    expect(res.statusCode).toBe(401);
    res.resume();
    // Node reads and drops the rest of the body, which never ends: the connection is closed
    // once ORISUN_BODY_TIMEOUT (2 s here) has passed since the request began.
    await within(new Promise((r) => req.socket?.once("close", r)), 5_000);
    expect(performance.now() - started).toBeGreaterThanOrEqual(1_900);
    expect(app.bodies.held).toBe(0);
  });
  it("a subscription over HTTP/1.1 outlives ORISUN_BODY_TIMEOUT: its body ended long before", async () => {
    const app = servers[1]?.app as RunningApp;
    const transport = createConnectTransport({ baseUrl: app.url, httpVersion: "1.1" });
    const store = createClient(EventStore, transport);
    const owner = { headers: { authorization: OWNER } };
    const boundary = "default";
    const id = crypto.randomUUID();
    const abort = new AbortController();
    const seen = (async () => {
      for await (const e of store.subscribeToEvents(
        { boundary },
        { ...owner, signal: abort.signal },
      )) {
        if (e.eventId === id) return true;
      }
      return false;
    })();
    // Past ORISUN_BODY_TIMEOUT (2 s), and Node's request timeout, which it sets over HTTP/1.1.
    await new Promise((r) => setTimeout(r, 3_000));
    await store.saveEvents(oneEvent(boundary, id), owner);
    expect(await within(seen, 5_000)).toBe(true);
    abort.abort();
  });
});
