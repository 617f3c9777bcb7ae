import { Http2ServerRequest } from "node:http2";
import type { DescMethod } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  type ConnectRouterOptions,
  type ContextValues,
  createConnectRouter,
} from "@connectrpc/connect";
import * as protoConnect from "@connectrpc/connect/protocol-connect";
import * as protoGrpc from "@connectrpc/connect/protocol-grpc";
import * as protoGrpcWeb from "@connectrpc/connect/protocol-grpc-web";
import {
  compressionBrotli,
  compressionGzip,
  universalRequestFromNodeRequest,
  universalResponseToNodeResponse,
} from "@connectrpc/connect-node";
import type { FastifyInstance, FastifyRequest } from "fastify";
import {
  type CountLimits,
  checkBinaryCounts,
  checkJsonCounts,
  countedBody,
} from "../api/wire-counts.js";
import type { BodyBudget, BodyMeter } from "./body-budget.js";
import { isClientGone } from "./client-gone.js";
import { type Admit, endUnfinishedRequest, guardedBody } from "./request-body.js";

/** What requests may be compressed with (and answers, when the client accepts it). */
const COMPRESSIONS = [compressionGzip, compressionBrotli];

export interface ConnectPluginOptions extends ConnectRouterOptions {
  readonly routes: (router: ConnectRouter) => void;
  /** Context values for a call, from its Fastify request. */
  readonly contextValues: (req: FastifyRequest) => ContextValues;
  /**
   * Bounds the request bodies still arriving (body-budget.ts), with the connection a request came
   * on. Client-streaming calls are left out: their body is read message by message as it is used.
   */
  readonly bodies?: { readonly budget: BodyBudget; connection(req: FastifyRequest): object };
  /** Admits a call from its headers before any of its body is read (request-body.ts). */
  readonly admit?: Admit;
  /** ORISUN_BODY_TIMEOUT: a call's body must have arrived this long after the call began. */
  readonly bodyTimeoutMs: number;
  /** The request's count limits, checked on each message's bytes before it is decoded. */
  readonly countLimits?: CountLimits;
}

/**
 * Connect's routes on Fastify: @connectrpc/connect-fastify's plugin (2.2), except for what a
 * failed response writes. That plugin prints every failure but ABORTED to stderr with
 * console.error, as a multi-line stack outside the JSON log; a subscriber that disconnects while
 * the server writes to it fails the write with ECANCELED or EPIPE, which Connect reports as
 * INTERNAL, so every such disconnect printed a stack. Here a client that went away is a debug
 * line, and any other failure an error line, both through the request's logger.
 */
export function connectPlugin(
  instance: FastifyInstance,
  options: ConnectPluginOptions,
  done: (error?: Error) => void,
): void {
  const router = createConnectRouter({
    acceptCompression: COMPRESSIONS,
    ...options,
  });
  options.routes(router);
  // The body is Connect's to read: Fastify must not parse or refuse any of its content types.
  const untouched = (
    _req: unknown,
    _payload: unknown,
    parsed: (e: null, body: undefined) => void,
  ) => parsed(null, undefined);
  instance.addContentTypeParser(
    [
      protoConnect.contentTypeUnaryJson,
      protoConnect.contentTypeStreamJson,
      protoGrpcWeb.contentTypeProto,
      protoGrpcWeb.contentTypeJson,
      protoGrpc.contentTypeProto,
      protoGrpc.contentTypeJson,
    ],
    untouched,
  );
  for (const type of [
    protoGrpc.contentTypeRegExp,
    protoGrpcWeb.contentTypeRegExp,
    protoConnect.contentTypeRegExp,
  ]) {
    instance.addContentTypeParser(type, untouched);
  }
  for (const handler of router.handlers) {
    const kind = handler.method.methodKind;
    // One request message: the body is read whole before the call starts, so it is counted and
    // must arrive within ORISUN_BODY_TIMEOUT. A client or bidi stream's body lasts as long as the
    // call and is read message by message as the handler uses it.
    const oneMessage = kind === "unary" || kind === "server_streaming";
    instance.all(handler.requestPath, async (req, reply) => {
      let meter: BodyMeter | undefined;
      try {
        const values = options.contextValues(req);
        const request = universalRequestFromNodeRequest(req.raw, reply.raw, undefined, values);
        const admitted = options.admit?.(handler.method, req.headers.authorization, values);
        // A GET carries its message in the URL, so nothing waits for this: unless it finished
        // first, the interceptor authenticates the call itself (the two share one check).
        admitted?.catch(() => {});
        const bodies = oneMessage ? options.bodies : undefined;
        if (isBytes(request.body)) {
          meter = bodies?.budget.meter(bodies.connection(req));
          request.body = guardedBody(request.body, {
            admitted,
            meter,
            timeoutMs: oneMessage ? options.bodyTimeoutMs : undefined,
            onCutShort: () => stopTheBody(req),
          });
          if (options.countLimits) {
            request.body = countedRequest(
              request.body,
              handler.method,
              req.headers,
              options.countLimits,
              options.readMaxBytes ?? 0xffffffff,
            );
          }
        }
        const response = await handler(request);
        // Headers set on the reply (by hooks) reach the client only through reply.send, which
        // is not used here.
        for (const [key, value] of Object.entries(reply.getHeaders())) {
          if (value !== undefined) reply.raw.setHeader(key, value);
        }
        await universalResponseToNodeResponse(response, reply.raw);
      } catch (error) {
        const rpc = handler.method.name;
        if (isClientGone(error)) req.log.debug({ rpc, reason: String(error) }, "client went away");
        else if (ConnectError.from(error).code !== Code.Aborted) {
          req.log.error({ err: error, rpc }, "response failed");
        }
      } finally {
        meter?.release();
      }
    });
  }
  done();
}

/**
 * A call whose body was given up before its end: over HTTP/2 its stream is reset once the answer
 * is out (request-body.ts). Over HTTP/1.1 Node reads and drops the rest of the body after the
 * answer, so that the connection can carry the next request, within ORISUN_BODY_TIMEOUT of the
 * request's start (one-port.ts); closing at once instead would make the kernel reset a
 * connection with unread bytes, and the client could lose the answer.
 */
function stopTheBody(req: FastifyRequest): void {
  if (req.raw instanceof Http2ServerRequest) endUnfinishedRequest(req.raw.stream);
}

/**
 * The body with each message's counts checked before Connect decodes it (api/wire-counts.ts), by
 * its framing and format: gRPC, gRPC-Web and Connect's streaming protocol frame each message in an
 * envelope, Connect's unary protocol sends one message as the body. A compressed message (an
 * envelope's flag, or Connect's content-encoding for a whole body) is decompressed for the check,
 * within the size limit, and Connect decompresses it again: otherwise a few kilobytes of gzip
 * would decode into millions of entries unchecked. What cannot be decompressed is left to Connect,
 * which refuses it. gRPC-Web's text (base64) format needs no check: Connect answers it 415
 * Unsupported Media Type without reading the body.
 */
function countedRequest(
  body: AsyncIterable<Uint8Array>,
  method: DescMethod,
  headers: FastifyRequest["headers"],
  limits: CountLimits,
  maxBytes: number,
): AsyncIterable<Uint8Array> {
  const type = (headers["content-type"] ?? "").toLowerCase();
  if (type.startsWith("application/grpc-web-text")) return body;
  const json = /[/+]json\b/.test(type);
  const whole = type.startsWith("application/proto") || type.startsWith("application/json");
  const encodingHeader = whole
    ? "content-encoding"
    : type.startsWith("application/connect")
      ? "connect-content-encoding"
      : "grpc-encoding";
  const encoding = headers[encodingHeader];
  const compression = COMPRESSIONS.find((c) => c.name === encoding);
  // A whole body is compressed as a whole; an envelope says so in its flags.
  const wholeCompressed = whole && encoding !== undefined && encoding !== "identity";
  const check = json ? checkJsonCounts : checkBinaryCounts;
  // Each message of a client stream is named as import-handler.ts names its faults.
  let index = 0;
  return countedBody(
    body,
    whole ? "whole" : "envelope",
    async (message, compressed) => {
      const at = method.methodKind === "client_streaming" ? `messages[${index++}]` : "";
      let bytes = message;
      if (compressed || wholeCompressed) {
        if (!compression) return;
        try {
          bytes = await compression.decompress(message, maxBytes);
        } catch {
          return; // Connect gives the client its own error for it
        }
      }
      check(method.input, bytes, limits, at);
    },
    maxBytes,
  );
}

function isBytes(body: unknown): body is AsyncIterable<Uint8Array> {
  return typeof body === "object" && body !== null && Symbol.asyncIterator in body;
}
