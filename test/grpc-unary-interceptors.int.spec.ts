import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  type ContextValues,
  createContextKey,
  createContextValues,
  createMethodImplSpec,
  type HandlerContext,
  type Interceptor,
} from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { FastifyBaseLogger } from "fastify";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  EventStore,
  SaveEventsRequestSchema,
  WriteResultSchema,
} from "../gen/orisun/v1/eventstore_pb.js";
import { grpcUnaryPath, type UnaryRoute } from "../server/http/grpc-unary-path.js";
import { frame } from "./support/raw-rpc.js";

/**
 * The lean unary path makes each call's HandlerContext itself (grpc-unary-path.ts) and runs the
 * interceptors through Connect's invokeUnaryImplementation. Here interceptors that pass the
 * request on, replace it, copy it, add context values and change the answer's headers run on that
 * path and on Connect's own gRPC handler; what the implementation saw (reported in response
 * headers: the request's headers, context values, service, method, deadline, signal) and what the
 * client got must be the same from both.
 */
const kTag = createContextKey("untagged");

/** What the implementation saw, as response headers. */
function saveEvents(_request: unknown, ctx: HandlerContext) {
  ctx.responseHeader.set("x-impl-probe", ctx.requestHeader.get("x-probe") ?? "none");
  ctx.responseHeader.set("x-impl-tag", ctx.values.get(kTag));
  ctx.responseHeader.set("x-impl-service", ctx.service.typeName);
  ctx.responseHeader.set("x-impl-method", ctx.method.name);
  ctx.responseHeader.set("x-impl-deadline", String(ctx.timeoutMs() !== undefined));
  ctx.responseHeader.set("x-impl-aborted", String(ctx.signal.aborted));
  ctx.responseTrailer.set("x-impl-trailer", "set");
  return create(WriteResultSchema, { logPosition: { commitPosition: 7n, preparePosition: 7n } });
}

/** Chosen per call by its x-mode header. */
const modal: Interceptor = (next) => async (req) => {
  const mode = req.header.get("x-mode");
  if (mode === "replace") return next({ ...req, header: new Headers({ "x-probe": "replaced" }) });
  if (mode === "copy") return next({ ...req });
  if (mode === "values") {
    const values: ContextValues = createContextValues().set(kTag, "from-interceptor");
    return next({ ...req, contextValues: values });
  }
  if (mode === "tag") req.contextValues.set(kTag, "in-place");
  const res = await next(req);
  if (mode === "answer") {
    res.header.set("x-interceptor", "mutated");
    const header = new Headers(res.header);
    header.set("x-replaced", "yes");
    const trailer = new Headers(res.trailer);
    trailer.set("x-only-trailer", "replaced");
    return { ...res, header, trailer };
  }
  return res;
};
/** A second interceptor, to see the order is kept: it marks what the first one handed on. */
const marker: Interceptor = (next) => async (req) => {
  const res = await next(req);
  res.header.append("x-order", req.header.get("x-probe") ?? "none");
  return res;
};
const interceptors = [modal, marker];

let lean: http2.Http2Server;
let connect: http2.Http2Server;
const urlOf = (server: http2.Http2Server) =>
  `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

beforeAll(async () => {
  const route = grpcUnaryPath({
    routes: [createMethodImplSpec(EventStore.method.saveEvents, saveEvents) as UnaryRoute],
    interceptors,
    requestGate: () => {},
    readMaxBytes: 1 << 20,
    maxTimeoutMs: 60_000,
    bodyTimeoutMs: 5_000,
    log: pino({ level: "silent" }) as unknown as FastifyBaseLogger,
    requestId: () => "request-1",
    contextValues: () => createContextValues(),
  });
  lean = http2.createServer();
  lean.on("stream", (stream, headers) => {
    if (route(stream, headers)) return;
    stream.respond({ ":status": 404 });
    stream.end();
  });
  connect = http2.createServer(
    connectNodeAdapter({
      interceptors,
      routes: (router) => router.rpc(EventStore.method.saveEvents, saveEvents),
    }),
  );
  await Promise.all(
    [lean, connect].map((s) => new Promise<void>((done) => s.listen(0, "127.0.0.1", done))),
  );
});

afterAll(async () => {
  await Promise.all([lean, connect].map((s) => new Promise((done) => s.close(done))));
});

const BODY = Buffer.from(
  frame(toBinary(SaveEventsRequestSchema, create(SaveEventsRequestSchema, { boundary: "b" }))),
);

/** Every header and trailer but the date, and the body, of one call. */
async function call(server: http2.Http2Server, headers: Record<string, string>) {
  const session = http2.connect(urlOf(server));
  try {
    return await new Promise<{ head: Record<string, unknown>; body: string }>((resolve, reject) => {
      const stream = session.request({
        ":method": "POST",
        ":path": "/orisun.v1.EventStore/SaveEvents",
        "content-type": "application/grpc",
        te: "trailers",
        ...headers,
      });
      const head: Record<string, unknown> = {};
      const chunks: Buffer[] = [];
      const keep = (h: http2.IncomingHttpHeaders) => {
        for (const [k, v] of Object.entries(h)) if (k !== "date") head[k] = v;
      };
      stream.on("response", keep);
      stream.on("trailers", keep);
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("error", reject);
      stream.on("close", () => resolve({ head, body: Buffer.concat(chunks).toString("hex") }));
      stream.end(BODY);
    });
  } finally {
    session.close();
  }
}

describe("interceptors on the lean unary path", () => {
  for (const mode of ["same", "tag", "replace", "copy", "values", "answer"]) {
    it(`x-mode ${mode}: the implementation sees, and the client gets, what Connect gives`, async () => {
      const headers = { "x-mode": mode, "x-probe": "from-client", "grpc-timeout": "5S" };
      const [a, b] = [await call(lean, headers), await call(connect, headers)];
      expect(a).toEqual(b);
      expect(a.head["grpc-status"]).toBe("0");
    });
  }

  it("hands the implementation what the interceptors handed on", async () => {
    const seen = async (mode: string) =>
      (await call(lean, { "x-mode": mode, "x-probe": "p" })).head;
    expect(await seen("same")).toMatchObject({ "x-impl-probe": "p", "x-impl-tag": "untagged" });
    expect(await seen("tag")).toMatchObject({ "x-impl-tag": "in-place" });
    expect(await seen("replace")).toMatchObject({
      "x-impl-probe": "replaced",
      "x-order": "replaced",
    });
    expect(await seen("copy")).toMatchObject({ "x-impl-probe": "p" });
    expect(await seen("values")).toMatchObject({ "x-impl-tag": "from-interceptor" });
    expect(await seen("answer")).toMatchObject({
      "x-replaced": "yes",
      "x-only-trailer": "replaced",
    });
  });
});
