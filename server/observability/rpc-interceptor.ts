import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { type Span, SpanKind, SpanStatusCode, type Tracer } from "@opentelemetry/api";
import type { Metrics } from "./metrics.js";

/** Connect's code names as on the wire ("invalid_argument"), and "ok". */
function codeName(error: unknown): string {
  const code = ConnectError.from(error).code;
  return (Code[code] ?? "unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

/**
 * Measures every RPC (and with tracing, gives it a span): in flight while it runs, then its
 * duration by service, method and code. Unary calls end when answered; a stream when its last
 * message is sent or it fails, or when the client goes away ("canceled"). It must come first
 * among the interceptors, so that it sees the codes the error interceptor made of StoreErrors.
 */
export function rpcInterceptor(
  metrics: Metrics | undefined,
  tracer: Tracer | undefined,
): Interceptor | undefined {
  if (!metrics && !tracer) return undefined;
  return (next) => async (req) => {
    const labels = { service: req.service.typeName, method: req.method.name };
    const started = performance.now();
    metrics?.rpcInFlight.inc(labels);
    let span: Span | undefined;
    let ended = false;
    const end = (code: string, error?: unknown) => {
      if (ended) return;
      ended = true;
      metrics?.rpcInFlight.dec(labels);
      metrics?.rpcDuration.observe({ ...labels, code }, (performance.now() - started) / 1000);
      if (span) {
        span.setAttribute("rpc.connect_rpc.error_code", code);
        if (error !== undefined) {
          span.setStatus({ code: SpanStatusCode.ERROR, message: ConnectError.from(error).message });
        }
        span.end();
      }
    };
    const call = async () => {
      let res: Awaited<ReturnType<typeof next>>;
      try {
        res = await next(req);
      } catch (error) {
        end(codeName(error), error);
        throw error;
      }
      if (!res.stream) {
        end("ok");
        return res;
      }
      // Connect aborts the signal when the call ends, also for a stream it never read; a stream
      // that ran ends first through the generator below, which knows how it ended.
      req.signal.addEventListener("abort", () => end("canceled"), { once: true });
      const messages = res.message;
      return {
        ...res,
        message: (async function* () {
          let finished = false;
          try {
            yield* messages;
            finished = true;
          } catch (error) {
            end(codeName(error), error);
            throw error;
          } finally {
            end(finished ? "ok" : "canceled");
          }
        })(),
      };
    };
    if (!tracer) return call();
    return tracer.startActiveSpan(
      `${labels.service}/${labels.method}`,
      {
        kind: SpanKind.SERVER,
        attributes: {
          "rpc.system": "connect_rpc",
          "rpc.service": labels.service,
          "rpc.method": labels.method,
        },
      },
      (active) => {
        span = active;
        return call();
      },
    );
  };
}
