import cluster from "node:cluster";
import { AggregatorRegistry } from "prom-client";

/**
 * With ORISUN_WORKERS > 1 a scrape reaches one worker, whose counters are a share of the whole.
 * The worker asks the primary, which gathers every worker's registry through prom-client's
 * AggregatorRegistry (counters and histograms summed; gauges as their metric declares) and
 * answers with the text. Workers answer the primary by themselves once they import prom-client;
 * metrics kept in a registry other than prom-client's global one must be handed to
 * `AggregatorRegistry.setRegistries` in the worker.
 */
const REQUEST = "orisun:cluster-metrics-request";
const RESPONSE = "orisun:cluster-metrics-response";

interface MetricsRequest {
  readonly type: typeof REQUEST;
  readonly id: number;
}

interface MetricsResponse {
  readonly type: typeof RESPONSE;
  readonly id: number;
  readonly text?: string;
  readonly error?: string;
}

/** In the primary, before forking: answers workers' requests for the cluster's metrics. */
export function serveClusterMetrics(): void {
  const aggregator = new AggregatorRegistry();
  cluster.on("message", (worker, message: Partial<MetricsRequest>) => {
    if (message?.type !== REQUEST || typeof message.id !== "number") return;
    const id = message.id;
    const reply = (response: MetricsResponse) => {
      if (worker.isConnected()) worker.send(response);
    };
    aggregator.clusterMetrics().then(
      (text) => reply({ type: RESPONSE, id, text }),
      (error: unknown) => reply({ type: RESPONSE, id, error: String(error) }),
    );
  });
}

/** The Prometheus content type of what clusterMetrics returns. */
export const clusterMetricsContentType = new AggregatorRegistry().contentType;

let nextId = 0;

/**
 * In a worker: every worker's metrics, aggregated by the primary. Undefined when this process is
 * not a cluster worker (ORISUN_WORKERS=1): its own registry is the whole.
 */
export function clusterMetrics(timeoutMs = 6_000): Promise<string | undefined> {
  const send = process.send?.bind(process);
  if (!cluster.isWorker || send === undefined) return Promise.resolve(undefined);
  const id = nextId++;
  return new Promise((resolve, reject) => {
    const onMessage = (message: Partial<MetricsResponse>) => {
      if (message?.type !== RESPONSE || message.id !== id) return;
      settle();
      if (message.error !== undefined) reject(new Error(message.error));
      else resolve(message.text ?? "");
    };
    const timer = setTimeout(() => {
      settle();
      reject(new Error(`the cluster primary did not send the metrics within ${timeoutMs} ms`));
    }, timeoutMs);
    const settle = () => {
      clearTimeout(timer);
      process.off("message", onMessage);
    };
    process.on("message", onMessage);
    send({ type: REQUEST, id } satisfies MetricsRequest);
  });
}
