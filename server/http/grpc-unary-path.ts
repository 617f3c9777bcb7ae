import type { IncomingHttpHeaders, ServerHttp2Stream } from "node:http2";
import * as http2 from "node:http2";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ContextValues,
  type HandlerContext,
  type Interceptor,
  type MethodImplSpec,
} from "@connectrpc/connect";
import {
  compressionNegotiate,
  createMethodSerializationLookup,
  envelopeCompress,
  invokeUnaryImplementation,
} from "@connectrpc/connect/protocol";
import { parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { compressionBrotli, compressionGzip } from "@connectrpc/connect-node";
import type { FastifyBaseLogger } from "fastify";
import { abortable } from "../abortable.js";
import { type CountLimits, checkBinaryCounts } from "../api/wire-counts.js";
import { lazyChildLogger } from "../process/lazy-child-logger.js";
import type { BodyBudget, BodyMeter } from "./body-budget.js";
import { type Admit, bodyTooSlow, endUnfinishedRequest } from "./request-body.js";

/** A unary method served here, with the implementation Connect's router has (createMethodImplSpec). */
export type UnaryRoute = MethodImplSpec & { kind: "unary" };

export interface GrpcUnaryPathOptions {
  readonly routes: readonly UnaryRoute[];
  /** The interceptors Connect's router runs, in the same order. */
  readonly interceptors: readonly Interceptor[];
  /** The request gate Connect's router runs (request-decoding.ts). */
  readonly requestGate: (context: HandlerContext) => void;
  /** Connect's readMaxBytes: the largest request message. */
  readonly readMaxBytes: number;
  /** Connect's maxTimeoutMs: the longest deadline a call may ask for. */
  readonly maxTimeoutMs: number;
  /**
   * Bounds the request bodies still arriving (body-budget.ts), with the connection a stream came
   * on, as Connect's routes are given them (connect-plugin.ts).
   */
  readonly bodies?: {
    readonly budget: BodyBudget;
    connection(stream: ServerHttp2Stream): object;
  };
  /** Admits a call from its headers before its body is read, as Connect's routes do. */
  readonly admit?: Admit;
  /** ORISUN_BODY_TIMEOUT: a call's body must have arrived this long after the call began. */
  readonly bodyTimeoutMs: number;
  /** The request's count limits, checked on the message's bytes before it is decoded. */
  readonly countLimits?: CountLimits;
  readonly log: FastifyBaseLogger;
  /** Request id taken from the x-request-id header, or made up (as Fastify's genReqId). */
  readonly requestId: (given: string | string[] | undefined) => string;
  /** The context values Connect's router would give the call. */
  readonly contextValues: (
    stream: ServerHttp2Stream,
    requestId: string,
    log: FastifyBaseLogger,
  ) => ContextValues;
}

/** Takes an HTTP/2 stream if it is a call this path serves; false leaves it to Fastify and Connect. */
export type StreamRoute = (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => boolean;

/** gRPC's binary content types; `+json`, gRPC-Web and Connect's protocol stay with Connect. */
const BINARY = new Set(["application/grpc", "application/grpc+proto"]);
const ENVELOPE_HEADER = 5;
const COMPRESSED_FLAG = 0b01;
/** What connect-fastify offers clients for compressed answers, and from what size it compresses. */
const ACCEPT_COMPRESSION = [compressionGzip, compressionBrotli];
const COMPRESS_MIN_BYTES = 1024;
/** The reason the call's context is aborted with once it is answered: it releases its listeners. */
const ANSWERED = new Error("the call was answered");

/**
 * Unary gRPC calls with binary protobuf bodies (what every gRPC client sends by default), served
 * straight from the HTTP/2 stream: the body is read into one buffer, decoded, handed to the
 * same interceptors and implementation as Connect's router, and the answer is written as one
 * DATA frame and trailers. Connect's own gRPC handler does the same through Fastify's routing and
 * request objects, Node's HTTP/2 compatibility layer and a pipeline of async iterables, which
 * cost a trivial call several times what the call itself costs (README, design notes, "Unary
 * gRPC without Fastify and Connect's pipeline").
 *
 * What the call sees is Connect's: its HandlerContext (as Connect's createHandlerContext makes it),
 * its interceptor invocation, its message (de)serialisation and limits, its grpc-timeout parsing,
 * its choice of compression for the answer and its trailer encoding of errors. The protocol
 * errors of reading the body (size over readMaxBytes, a compressed or incomplete envelope, no
 * message or two) carry Connect's codes and messages. Anything else (JSON, a compressed request,
 * gRPC-Web, the Connect protocol, other methods) is left to Connect.
 */
export function grpcUnaryPath(options: GrpcUnaryPathOptions): StreamRoute {
  const routes = new Map(
    options.routes.map((spec) => [
      `/${spec.method.parent.typeName}/${spec.method.name}`,
      {
        spec,
        serialization: createMethodSerializationLookup(spec.method, undefined, undefined, {
          readMaxBytes: options.readMaxBytes,
          writeMaxBytes: 0xffffffff,
        }),
      },
    ]),
  );
  // The request log of process/request-log.ts: a line as a call arrives at trace, one when it is
  // answered at debug.
  const trace = options.log.level === "trace";
  const debug = trace || options.log.level === "debug";
  type Route = NonNullable<ReturnType<typeof routes.get>>;

  async function serve(route: Route, stream: ServerHttp2Stream, headers: IncomingHttpHeaders) {
    const started = performance.now();
    const requestId = options.requestId(headers["x-request-id"]);
    const log = lazyChildLogger(options.log, { reqId: requestId });
    if (trace) log.trace({ method: "POST", url: headers[":path"] }, "incoming request");
    let answered = false;
    const timeout = parseTimeout(single(headers["grpc-timeout"]) ?? null, options.maxTimeoutMs);
    const method = route.spec.method;
    const values = options.contextValues(stream, requestId, log);
    const context = new UnaryCallContext(
      method,
      // A deadline beyond the maximum is refused below, not armed (Node would warn and fire at once).
      timeout.error ? undefined : timeout.timeoutMs,
      webHeaders(headers),
      `${stream.session?.encrypted ? "https" : "http"}://${single(headers[":authority"])}${headers[":path"]}`,
      values,
    );
    // A body still arriving when ORISUN_BODY_TIMEOUT passes is given up.
    const reading = new AbortController();
    const tooSlow = setTimeout(
      () => reading.abort(bodyTooSlow(options.bodyTimeoutMs)),
      options.bodyTimeoutMs,
    );
    // A client that resets the stream (cancels) or goes away: the store lets go of the call, and
    // the body is no longer read. Not through context.abort, as with Connect's request signal:
    // that is for the call's own end.
    stream.once("close", () => {
      if (answered) return;
      const reason = new ConnectError("the client closed the stream", Code.Canceled);
      reading.abort(reason);
      context.cancel(reason);
    });
    // Without a listener, a stream error (a reset while writing) would end the process.
    stream.on("error", () => {});

    // Requests are never compressed here (see the route below); answers as Connect would.
    const compression = compressionNegotiate(
      ACCEPT_COMPRESSION,
      null,
      single(headers["grpc-accept-encoding"]) ?? null,
      "grpc-accept-encoding",
    ).response;
    if (compression) context.responseHeader.set("grpc-encoding", compression.name);
    let body: Buffer | undefined;
    let bodyRead = false;
    try {
      options.requestGate(context);
      if (timeout.error) throw timeout.error;
      const admitted = options.admit?.(method, single(headers.authorization), values);
      if (admitted) await abortable(admitted, reading.signal);
      const serialization = route.serialization.getI(true);
      // The client's going away or ORISUN_BODY_TIMEOUT stops the read, not the call's deadline
      // (see readUnaryMessage).
      const input = await readUnaryMessage(
        stream,
        options.readMaxBytes,
        reading.signal,
        (bytes) => {
          if (options.countLimits) checkBinaryCounts(method.input, bytes, options.countLimits);
          return serialization.parse(bytes);
        },
        options.bodies?.budget.meter(options.bodies.connection(stream)),
      );
      bodyRead = true;
      const output = await invokeUnaryImplementation(
        route.spec,
        context,
        input,
        options.interceptors as Interceptor[],
      );
      const answer = route.serialization.getO(true).serialize(output);
      if (compression && answer.length >= COMPRESS_MIN_BYTES) {
        const { flags, data } = await envelopeCompress(
          { flags: 0, data: answer },
          compression,
          COMPRESS_MIN_BYTES,
        );
        body = envelope(data, flags);
      } else body = envelope(answer, 0);
    } catch (caught) {
      const error =
        caught instanceof ConnectError
          ? caught
          : new ConnectError("internal error", Code.Internal, undefined, undefined, caught);
      // As Connect's handler: the request gate hears of the error first and may correct it.
      context.abort(error);
      setTrailerStatus(context.responseTrailer, error);
    }
    answered = true;
    clearTimeout(tooSlow);
    context.abort(ANSWERED);
    const trailers = plainHeaders(context.responseTrailer);
    if (!stream.destroyed && !stream.closed) {
      try {
        stream.respond(
          { ":status": 200, ...plainHeaders(context.responseHeader) },
          { waitForTrailers: true },
        );
        stream.once("wantTrailers", () => stream.sendTrailers(trailers));
        stream.end(body);
        // Refused before its body ended: the client is told to stop sending once answered.
        if (!bodyRead) endUnfinishedRequest(stream);
      } catch {
        // The client went away between the check and the write: nothing left to tell it.
      }
    }
    if (debug) {
      log.debug(
        {
          method: "POST",
          url: headers[":path"],
          status: 200,
          grpcStatus: Number(trailers["grpc-status"]),
          ms: Math.round((performance.now() - started) * 100) / 100,
        },
        "request",
      );
    }
  }

  return (stream, headers) => {
    const path = headers[":path"];
    const route = path === undefined ? undefined : routes.get(path);
    if (route === undefined || headers[":method"] !== "POST") return false;
    if (!BINARY.has(headers["content-type"] ?? "")) return false;
    const encoding = headers["grpc-encoding"];
    if (encoding !== undefined && encoding !== "identity") return false;
    serve(route, stream, headers).catch((error: unknown) => {
      // Only a fault of this file gets here (every call's own error is answered in trailers).
      options.log.error({ err: error, url: path }, "unary gRPC call failed");
      if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    });
    return true;
  };
}

/**
 * The HandlerContext Connect's createHandlerContext makes for a call on its gRPC path, with the
 * same fields, deadline and `abort`, on one AbortController: Connect's links a deadline
 * controller, the request's signal and its own, four controllers and their listeners per call on
 * this path. The deadline aborts the signal with Connect's DEADLINE_EXCEEDED; `cancel` (the client
 * went away) aborts it with its reason, and `abort` (the call ends, or fails with the error it is
 * answered with) also stops the deadline's timer. Like Connect's `abort`, the request gate may
 * replace `abort` with its own wrapper; the deadline and `cancel` do not go through it, as
 * Connect's linked signals do not. No shutdown signal, as with Connect's router here: a call in
 * flight is let finish. Connect's invokeUnaryImplementation copies the context's own fields for
 * the implementation, so every field is one (`abort` and `cancel` are left out).
 */
class UnaryCallContext implements HandlerContext {
  readonly service: DescService;
  readonly requestMethod = "POST";
  readonly protocolName = "grpc";
  readonly signal: AbortSignal;
  readonly timeoutMs: () => number | undefined;
  readonly responseHeader = new Headers({ "content-type": "application/grpc+proto" });
  readonly responseTrailer = new Headers({ "grpc-status": "0" });
  readonly #controller = new AbortController();
  readonly #deadline: NodeJS.Timeout | undefined;

  constructor(
    readonly method: DescMethod,
    timeoutMs: number | undefined,
    readonly requestHeader: Headers,
    readonly url: string,
    readonly values: ContextValues,
  ) {
    this.service = method.parent;
    this.signal = this.#controller.signal;
    if (timeoutMs === undefined) {
      this.timeoutMs = () => undefined;
      return;
    }
    const at = Date.now() + timeoutMs;
    this.timeoutMs = () => at - Date.now();
    const expire = () =>
      this.#controller.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
    if (timeoutMs <= 0) expire();
    else this.#deadline = setTimeout(expire, timeoutMs);
  }

  abort(reason: unknown): void {
    clearTimeout(this.#deadline);
    this.#controller.abort(reason);
  }

  cancel(reason: unknown): void {
    this.#controller.abort(reason);
  }
}

/**
 * Reads the request body: exactly one enveloped message, as Connect's gRPC handler requires of a
 * unary call, with its errors in its order. No more than two envelopes of at most `maxBytes`
 * each are ever held; a longer body is refused as soon as its second envelope is complete, and
 * nothing more is read after an error (the stream is reset once answered). `signal` stops the
 * read: the client's closing the stream or ORISUN_BODY_TIMEOUT, not the call's deadline: Connect's
 * handler reads the body past a deadline too, and the implementation then refuses the call with
 * its own DEADLINE_EXCEEDED, so both paths give the same answer.
 */
function readUnaryMessage<T>(
  stream: ServerHttp2Stream,
  maxBytes: number,
  signal: AbortSignal,
  parse: (bytes: Uint8Array) => T,
  /** Charged for each chunk as it arrives, let go once the body is read or given up. */
  meter?: BodyMeter,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const messages: T[] = [];
    let header = Buffer.alloc(0);
    /** The message's declared length once its header is in; its bytes so far in `parts`. */
    let length: number | undefined;
    let parts: Buffer[] = [];
    let filled = 0;
    const finish = (error: unknown, value?: T) => {
      meter?.release();
      stream.off("data", onData);
      stream.off("end", onEnd);
      signal.removeEventListener("abort", onAbort);
      if (error === undefined) resolve(value as T);
      else {
        // The rest of the body is not wanted: not read, so that flow control holds the client
        // back until the stream is reset.
        stream.pause();
        reject(error);
      }
    };
    const onAbort = () => finish(signal.reason);
    const onData = (chunk: Buffer) => {
      try {
        meter?.add(chunk.length);
        let at = 0;
        while (at < chunk.length) {
          if (length === undefined) {
            const take = Math.min(ENVELOPE_HEADER - header.length, chunk.length - at);
            header = Buffer.concat([header, chunk.subarray(at, at + take)]);
            at += take;
            if (header.length < ENVELOPE_HEADER) return;
            length = header.readUInt32BE(1);
            if (length > maxBytes) {
              throw new ConnectError(
                `message size ${length} is larger than configured readMaxBytes ${maxBytes}`,
                Code.ResourceExhausted,
              );
            }
            parts = [];
            filled = 0;
          }
          // Kept as it arrives, not in a buffer of the declared length: a header alone must not
          // make the server hold up to readMaxBytes that the body budget has not counted.
          const take = Math.min(length - filled, chunk.length - at);
          parts.push(chunk.subarray(at, at + take));
          filled += take;
          at += take;
          if (filled < length) return;
          const data = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, length);
          if ((header[0] ?? 0) & COMPRESSED_FLAG) {
            throw new ConnectError(
              "received compressed envelope, but do not know how to decompress",
              Code.Internal,
            );
          }
          messages.push(parse(data));
          header = Buffer.alloc(0);
          length = undefined;
          parts = [];
          if (messages.length > 1) {
            throw new ConnectError(
              "the request must carry exactly one message: protocol error: received extra input message for unary method",
              Code.InvalidArgument,
            );
          }
        }
      } catch (error) {
        finish(error);
      }
    };
    const onEnd = () => {
      if (header.length > 0 || length !== undefined) {
        finish(new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument));
      } else if (messages.length === 0) {
        finish(
          new ConnectError(
            "the request must carry exactly one message: protocol error: missing input message for unary method",
            Code.InvalidArgument,
          ),
        );
      } else finish(undefined, messages[0]);
    };
    if (signal.aborted) return reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    stream.on("data", onData);
    stream.on("end", onEnd);
    // A body that ended before it was read (none at all, read after admission) has had its "end".
    if (stream.readableEnded) onEnd();
  });
}

function envelope(message: Uint8Array, flags: number): Buffer {
  const out = Buffer.allocUnsafe(ENVELOPE_HEADER + message.length);
  out[0] = flags;
  out.writeUInt32BE(message.length, 1);
  out.set(message, ENVELOPE_HEADER);
  return out;
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** The request's headers as Connect's Node adapter gives them: pseudo-headers left out. */
function webHeaders(headers: IncomingHttpHeaders): Headers {
  const out = new Headers();
  for (const key in headers) {
    if (key.startsWith(":")) continue;
    const value = headers[key];
    if (Array.isArray(value)) for (const v of value) out.append(key, v);
    else if (value !== undefined) out.append(key, value);
  }
  return out;
}

function plainHeaders(headers: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  headers.forEach((value, key) => {
    out[key] = value;
  });
  return out;
}
