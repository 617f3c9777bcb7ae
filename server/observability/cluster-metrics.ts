import cluster, { type Worker } from "node:cluster";
import { AggregatorRegistry, type Registry } from "prom-client";

const REQUEST = "orisun:cluster-metrics-request";
const REPLY = "orisun:cluster-metrics-reply";

interface Request {
  readonly type: typeof REQUEST;
  readonly id: number;
}

interface Reply {
  readonly type: typeof REPLY;
  readonly id: number;
  readonly text?: string;
  readonly error?: string;
}

const isRequest = (m: unknown): m is Request =>
  typeof m === "object" && m !== null && (m as Request).type === REQUEST;
const isReply = (m: unknown): m is Reply =>
  typeof m === "object" && m !== null && (m as Reply).type === REPLY;

/**
 * In the cluster's primary: answers each worker's request for the metrics of the whole cluster,
 * which prom-client's AggregatorRegistry collects from every worker over IPC (counters and
 * histograms summed, gauges summed unless they say otherwise: lags take the max). Needed because
 * the workers share one port: a scrape reaches one worker at random, which alone cannot see the
 * others. `primary`: the primary's own metrics, added to every answer. Returns a function that
 * stops answering.
 */
export function serveClusterMetrics(primary?: Registry): () => void {
  const aggregator = new AggregatorRegistry();
  // The workers' metrics, then the primary's own (primary-metrics.ts).
  const collect = async () => {
    const workers = await aggregator.clusterMetrics();
    if (primary === undefined) return workers;
    return `${workers.endsWith("\n") ? workers : `${workers}\n`}${await primary.metrics()}`;
  };
  const onMessage = (worker: Worker, message: unknown) => {
    if (!isRequest(message)) return;
    const reply = (fields: { text: string } | { error: string }) => {
      if (worker.isConnected()) worker.send({ type: REPLY, id: message.id, ...fields });
    };
    collect().then(
      (text) => reply({ text }),
      (error: Error) => reply({ error: error.message }),
    );
  };
  cluster.on("message", onMessage);
  return () => cluster.off("message", onMessage);
}

/**
 * In a worker: offers `registry` to the primary's collection, and returns the scrape of the
 * whole cluster, asked of the primary (which must run serveClusterMetrics). A primary that does
 * not answer within `timeoutMs` fails the scrape: a partial answer would pass for the whole.
 */
export function clusterScrape(registry: Registry, timeoutMs = 5_000): () => Promise<string> {
  AggregatorRegistry.setRegistries([registry]);
  // Constructing one installs prom-client's listener that answers the primary's collection.
  new AggregatorRegistry();
  const pending = new Map<number, (reply: Reply) => void>();
  let next = 0;
  process.on("message", (message: unknown) => {
    if (isReply(message)) pending.get(message.id)?.(message);
  });
  return () =>
    new Promise<string>((resolve, reject) => {
      const id = next++;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(
          new Error(
            `the cluster's primary did not answer within ${timeoutMs} ms (does it run serveClusterMetrics?)`,
          ),
        );
      }, timeoutMs);
      pending.set(id, (reply) => {
        clearTimeout(timer);
        pending.delete(id);
        if (reply.text !== undefined) resolve(reply.text);
        else reject(new Error(reply.error ?? "no metrics"));
      });
      process.send?.({ type: REQUEST, id } satisfies Request);
    });
}
