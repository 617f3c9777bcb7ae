import {
  Code,
  ConnectError,
  createContextKey,
  type HandlerContext,
  type Interceptor,
} from "@connectrpc/connect";
import { type Span, SpanKind, SpanStatusCode, type Tracer } from "@opentelemetry/api";
import type { Metrics } from "./metrics.js";

/** Connect's code names as on the wire ("invalid_argument"), and "ok". */
function codeName(error: unknown): string {
  const code = ConnectError.from(error).code;
  return (Code[code] ?? "unknown").replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

/** Set on every call the interceptor measures: one without it was answered before the interceptors. */
const kMeasured = createContextKey(false);

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
    req.contextValues.set(kMeasured, true);
    const started = performance.now();
    const labels = metrics
      ? metrics.rpc.started(req.method)
      : { service: req.service.typeName, method: req.method.name };
    let span: Span | undefined;
    let ended = false;
    const end = (code: string, error?: unknown) => {
      if (ended) return;
      ended = true;
      metrics?.rpc.ended(req.method, code, (performance.now() - started) / 1000);
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

/**
 * Measures the calls answered before Connect ran the interceptors, in the same histogram with
 * their code: those refused from their headers or while their body was read (authentication, the
 * body budgets and deadline, a message over the size limit or with too many entries, bytes that
 * are not a valid message). Run for every call as part of the request gate, after
 * api/request-decoding.ts's: every protocol handler aborts the call's context with the error it is
 * about to write, so wrapping `abort` sees them all, with the gate's corrections already made.
 */
export function refusedCallObserver(
  metrics: Metrics | undefined,
): ((context: HandlerContext) => void) | undefined {
  if (!metrics) return undefined;
  return (context) => {
    const started = performance.now();
    // createHandlerContext's object has an `abort` method that the HandlerContext type leaves out.
    const controller = context as HandlerContext & { abort(reason?: unknown): void };
    const abort = controller.abort.bind(controller);
    let observed = false;
    controller.abort = (reason?: unknown) => {
      abort(reason);
      if (observed || !(reason instanceof ConnectError) || context.values.get(kMeasured)) return;
      observed = true;
      metrics.rpc.refused(context.method, codeName(reason), (performance.now() - started) / 1000);
    };
  };
}
