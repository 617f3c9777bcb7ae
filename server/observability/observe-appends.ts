import { type Context, context, SpanStatusCode, type Tracer, trace } from "@opentelemetry/api";
import type { AppendObserver } from "../store/append-observer.js";
import type { Metrics } from "./metrics.js";

/**
 * The write path's observer: batch metrics, and with tracing a span per group-commit
 * transaction. Undefined when neither is on, so that the appender skips the hook entirely.
 */
export function observeAppends(
  metrics: Metrics | undefined,
  tracer: Tracer | undefined,
): AppendObserver | undefined {
  if (!metrics && !tracer) return undefined;
  return {
    async transaction(boundary, requests, run) {
      const started = performance.now();
      try {
        return tracer ? await traced(tracer, boundary, requests, run) : await run();
      } finally {
        metrics?.recordTransaction((performance.now() - started) / 1000);
      }
    },
    committed(boundary, outcome) {
      metrics?.recordBatch(boundary, outcome);
    },
  };
}

/**
 * A boundary's transactions run one after another in the async context of the request that
 * started its queue, whose RPC span may have ended long ago: the span is that RPC's child only
 * while the RPC is still open (its span still recording, or, for an append another worker
 * forwarded, the span it carried), otherwise a root span of its own.
 */
function traced<T>(
  tracer: Tracer,
  boundary: string,
  requests: number,
  run: () => Promise<T>,
): Promise<T> {
  const parent = trace.getActiveSpan();
  const ctx: Context =
    parent?.isRecording() || parent?.spanContext().isRemote
      ? context.active()
      : trace.deleteSpan(context.active());
  return tracer.startActiveSpan(
    "orisun.append.transaction",
    { attributes: { "orisun.boundary": boundary, "orisun.requests": requests } },
    ctx,
    async (span) => {
      try {
        return await run();
      } catch (error) {
        span.recordException(error as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
        throw error;
      } finally {
        span.end();
      }
    },
  );
}
