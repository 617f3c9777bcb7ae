import cluster from "node:cluster";
import type { HandlerContext, Interceptor } from "@connectrpc/connect";
import type { ObservabilityConfig } from "../config.js";
import type { AppendObserver } from "../store/append-observer.js";
import type { EventStore } from "../store/event-store.js";
import type { Position } from "../store/types.js";
import { clusterScrape } from "./cluster-metrics.js";
import { Metrics } from "./metrics.js";
import { observeAppends } from "./observe-appends.js";
import { refusedCallObserver, rpcInterceptor } from "./rpc-interceptor.js";
import { startTracing, type Tracing } from "./tracing.js";

/** Metrics and traces as configured; each part undefined when off, so that nothing runs. */
export interface Observability {
  readonly metrics: Metrics | undefined;
  readonly tracing: Tracing | undefined;
  /** For EventStore.open. */
  readonly appends: AppendObserver | undefined;
  /** The first of the Connect interceptors. */
  readonly interceptor: Interceptor | undefined;
  /** Part of the request gate: measures calls answered before the interceptors ran. */
  readonly refusals: ((context: HandlerContext) => void) | undefined;
  /** GET /metrics's text: this process's, or in a cluster worker the whole cluster's. */
  scrape(): Promise<string>;
  /** Connects the scrape-time gauges to the store and the live feeds, once they exist. */
  attach(store: EventStore, feedPosition: (boundary: string) => Position | undefined): void;
  close(): Promise<void>;
}

export async function startObservability(config: ObservabilityConfig): Promise<Observability> {
  const metrics = config.metrics
    ? new Metrics({ boundaryLabels: config.boundaryLabels })
    : undefined;
  const tracing = await startTracing({
    endpoint: config.otlpEndpoint,
    serviceName: config.serviceName,
  });
  const local = async () => (metrics ? metrics.registry.metrics() : "");
  const scrape = metrics && cluster.isWorker ? clusterScrape(metrics.registry) : local;
  return {
    metrics,
    tracing,
    appends: observeAppends(metrics, tracing?.tracer),
    interceptor: rpcInterceptor(metrics, tracing?.tracer),
    refusals: refusedCallObserver(metrics),
    scrape,
    attach(store, feedPosition) {
      metrics?.attach({
        pool: store.database.pool,
        disk: store.database.diskSpace,
        feedPosition,
        async heads(boundaries) {
          const rows = await store.database.db
            .selectFrom("orisun_boundaries")
            .select(["name", "last_prepare"])
            .where("name", "in", [...boundaries])
            .execute();
          return new Map(rows.map((r) => [r.name, BigInt(r.last_prepare)]));
        },
      });
    },
    async close() {
      await tracing?.shutdown();
    },
  };
}
