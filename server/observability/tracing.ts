import { context, ROOT_CONTEXT, type Tracer, trace } from "@opentelemetry/api";

export interface Tracing {
  readonly tracer: Tracer;
  /** Sends the spans still buffered and stops the exporter. */
  shutdown(): Promise<void>;
}

export interface TracingOptions {
  /** OTEL_EXPORTER_OTLP_ENDPOINT; undefined: no tracing, and no SDK is loaded. */
  readonly endpoint: string | undefined;
  /** OTEL_SERVICE_NAME, default "orisun". */
  readonly serviceName: string;
}

/**
 * OpenTelemetry traces over OTLP/HTTP (JSON), on only when an endpoint is configured. The SDK
 * and exporter are imported here, dynamically, so a server without tracing never loads them:
 * the interceptor and the append observer are then not even installed. The exporter reads the
 * other standard variables itself (OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
 * OTEL_EXPORTER_OTLP_TIMEOUT). Spans go out in batches every 5 s, and at shutdown.
 */
export async function startTracing(options: TracingOptions): Promise<Tracing | undefined> {
  if (options.endpoint === undefined) return undefined;
  const [{ TracerProvider, BatchSpanProcessor }, { OTLPTraceExporter }, resources, hooks, semconv] =
    await Promise.all([
      import("@opentelemetry/sdk-trace"),
      import("@opentelemetry/exporter-trace-otlp-http"),
      import("@opentelemetry/resources"),
      import("@opentelemetry/context-async-hooks"),
      import("@opentelemetry/semantic-conventions"),
    ]);
  const provider = new TracerProvider({
    resource: resources.resourceFromAttributes({
      [semconv.ATTR_SERVICE_NAME]: options.serviceName,
    }),
    spanProcessors: [new BatchSpanProcessor({ exporter: new OTLPTraceExporter() })],
  });
  // Spans follow the request through awaits (the RPC's span is the append transaction's parent).
  const contextManager = new hooks.AsyncLocalStorageContextManager().enable();
  context.setGlobalContextManager(contextManager);
  trace.setGlobalTracerProvider(provider);
  return {
    tracer: provider.getTracer("orisun"),
    async shutdown() {
      await provider.shutdown();
      trace.disable();
      context.disable();
    },
  };
}

/**
 * The active span's context as text ("<trace id>-<span id>-<flags>", W3C traceparent's fields),
 * to carry work into another process; "" without tracing or outside a span.
 */
export function currentTrace(): string {
  const span = trace.getActiveSpan()?.spanContext();
  if (!span || !trace.isSpanContextValid(span)) return "";
  return `${span.traceId}-${span.spanId}-${span.traceFlags.toString(16).padStart(2, "0")}`;
}

/** Runs `work` as a child of the span `text` names (from currentTrace), or as it is. */
export function withinTrace<T>(text: string, work: () => T): T {
  const [traceId, spanId, flags] = text.split("-");
  if (traceId === undefined || spanId === undefined || flags === undefined) return work();
  const remote = { traceId, spanId, traceFlags: Number.parseInt(flags, 16), isRemote: true };
  if (!trace.isSpanContextValid(remote)) return work();
  return context.with(trace.setSpanContext(ROOT_CONTEXT, remote), work);
}
