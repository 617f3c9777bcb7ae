import * as http2 from "node:http2";
import { create, toBinary } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SaveEventsRequestSchema } from "../gen/orisun/v1/eventstore_pb.js";
import type { RunningApp } from "../server/app.js";
import { basic } from "./support/auth.js";
import { startEmbeddedApp } from "./support/embedded-app.js";

/**
 * Request bodies still arriving are bounded per connection and per process
 * (ORISUN_MAX_CONNECTION_BODY_BYTES, ORISUN_MAX_BODY_BYTES), before authentication: a client
 * without credentials that opens streams and never finishes their bodies is refused once it
 * holds the budget, on the unary gRPC path and through Connect alike, and what it held is let
 * go when it gives up.
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
  cancel(): void;
}

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
  return { answer, cancel: () => stream.close(http2.constants.NGHTTP2_CANCEL) };
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
  const body = Buffer.alloc(5 + message.length);
  body.writeUInt32BE(message.length, 1);
  body.set(message, 5);
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

describe.each(servers)("request bodies still arriving, on $name", (server) => {
  it("a connection is refused past its budget without credentials, and goes on once it lets go", async () => {
    const session = http2.connect((server.app as RunningApp).url);
    try {
      const held = [unfinished(session), unfinished(session)];
      await new Promise((r) => setTimeout(r, 200));
      for (const h of held) expect(await pending(h.answer)).toBe(true);
      const third = unfinished(session);
      const refused = await third.answer;
      expect(refused.status).toBe("8");
      expect(refused.message).toContain("ORISUN_MAX_CONNECTION_BODY_BYTES (8192 bytes)");
      third.cancel();
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
        held.push(unfinished(session), unfinished(session));
      }
      held.push(unfinished(sessions[2] as http2.ClientHttp2Session));
      await new Promise((r) => setTimeout(r, 200));
      for (const h of held) expect(await pending(h.answer)).toBe(true);
      const last = unfinished(sessions[2] as http2.ClientHttp2Session);
      const sixth = await last.answer;
      last.cancel();
      expect(sixth.status).toBe("8");
      expect(sixth.message).toContain("ORISUN_MAX_BODY_BYTES (16384 bytes)");
      for (const h of held) h.cancel();
      await Promise.all(held.map((h) => h.answer));
      expect(await save(sessions[2] as http2.ClientHttp2Session)).toBe("0");
    } finally {
      for (const s of sessions) s.destroy();
    }
  });
});
