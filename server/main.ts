import cluster from "node:cluster";
import Fastify from "fastify";
import { startApp } from "./app.js";
import { ConfigError, loadConfig } from "./config.js";
import { serveClusterMetrics } from "./observability/cluster-metrics.js";
import { PrimaryMetrics } from "./observability/primary-metrics.js";
import { loggerOptions } from "./process/logger.js";
import { workerSlotsOf } from "./process/worker-slots.js";
import { superviseWorkers } from "./process/worker-supervisor.js";

async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(`orisun: configuration error: ${error.message}`);
      process.exit(2);
    }
    throw error;
  }
  if (config.workers > 1 && cluster.isPrimary) {
    const metrics = new PrimaryMetrics();
    serveClusterMetrics(metrics.registry);
    // Fastify's pino, configured as the workers' is, so that every line has one format.
    superviseWorkers({
      workers: config.workers,
      port: config.port,
      host: config.host,
      stallMs: config.workerStallMs,
      metrics,
      log: Fastify({ logger: loggerOptions(config) }).log,
    });
    return;
  }
  const app = await startApp(config);
  app.log.info(
    {
      url: app.url,
      storage: app.store.embedded ? `embedded PGlite in ${config.dataDir}` : "PostgreSQL",
      ...(cluster.isWorker && { slot: workerSlotsOf(process.env)?.slot }),
    },
    `Orisun listening on ${app.url}`,
  );
  app.log.info(`Orisun console: open ${app.url}/console/ in a browser`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    app.log.info({ signal }, "shutting down");
    app.close().then(
      () => process.exit(0),
      (err) => {
        app.log.error({ err }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  // A worker whose primary is gone (killed) would otherwise serve on, unsupervised.
  if (cluster.isWorker) process.on("disconnect", () => stop("primary gone"));
}

main().catch((error: unknown) => {
  console.error("orisun: failed to start:", error instanceof Error ? error.message : error);
  process.exit(1);
});
