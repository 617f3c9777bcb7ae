import {
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  LogController,
} from "fastify";

/** gRPC statuses that arrived as HTTP/2 trailers, captured only while debug logging is on. */
const trailerStatus = new WeakMap<FastifyReply, string>();

/**
 * Fastify's two lines per request ("incoming request", "request completed") at info cost 0.1-0.3
 * ms of CPU per call. This keeps one line per request, at debug, with what an operator looks
 * for: method and path, the HTTP status, the gRPC status where the response carries one, and the
 * duration (and at trace, one more as it arrives). Failures of the server itself stay at error,
 * whatever the level.
 */
export class RequestLogController extends LogController {
  /** At trace only: a call that never completes (a stream, a hang) is then visible too. */
  override incomingRequest(request: FastifyRequest): void {
    if (request.log.level !== "trace") return;
    request.log.trace({ method: request.method, url: request.url }, "incoming request");
  }

  override requestCompleted(
    error: Error | null | undefined,
    request: FastifyRequest,
    reply: FastifyReply,
  ): void {
    if (error) {
      reply.log.error({ ...lineOf(request, reply), err: error }, "request failed");
      return;
    }
    if (!debugEnabled(reply.log.level)) return;
    reply.log.debug(lineOf(request, reply), "request");
  }

  /** A client's mistake (4xx) is the client's business: debug; ours (5xx) stays at error. */
  override defaultErrorLog(error: Error, request: FastifyRequest, reply: FastifyReply): void {
    if (reply.statusCode >= 500)
      reply.log.error({ ...lineOf(request, reply), err: error }, error.message);
    else reply.log.debug({ ...lineOf(request, reply), err: error }, error.message);
  }

  override routeNotFound(request: FastifyRequest): void {
    request.log.debug({ method: request.method, url: request.url }, "route not found");
  }

  /** A client that goes away mid-response (a cancelled stream) is normal: debug. */
  override streamError(error: Error, _request: FastifyRequest, reply: FastifyReply): void {
    if ((error as { code?: string }).code === "ERR_STREAM_PREMATURE_CLOSE") {
      reply.log.debug("stream closed by the client");
    } else reply.log.warn({ err: error }, "response ended with an error after its headers");
  }
}

const debugEnabled = (level: string) => level === "debug" || level === "trace";

function lineOf(request: FastifyRequest, reply: FastifyReply): Record<string, unknown> {
  const header = reply.getHeader("grpc-status");
  const grpc = typeof header === "string" ? header : trailerStatus.get(reply);
  return {
    method: request.method,
    url: request.url,
    status: reply.statusCode,
    ...(grpc === undefined ? {} : { grpcStatus: Number(grpc) }),
    ms: Math.round(reply.elapsedTime * 100) / 100,
  };
}

/**
 * gRPC's status usually travels in trailers, which a response does not keep: at debug level,
 * each response's trailers are looked at on their way out. At other levels nothing is added.
 */
export function captureGrpcStatus(app: FastifyInstance): void {
  if (!debugEnabled(app.log.level)) return;
  app.addHook("onRequest", async (_request, reply) => {
    const raw = reply.raw;
    const addTrailers = raw.addTrailers.bind(raw);
    raw.addTrailers = (trailers) => {
      const status = (trailers as Record<string, unknown>)["grpc-status"];
      if (status !== undefined) trailerStatus.set(reply, String(status));
      addTrailers(trailers);
    };
  });
}
