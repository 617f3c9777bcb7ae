import { Counter, Gauge, Registry } from "prom-client";

/** Why the primary started a worker again. */
export type RestartCause = "exited" | "stalled";

/**
 * What only the cluster's primary knows: its workers' restarts and how it handed out
 * connections. Served with the workers' metrics in every scrape (cluster-metrics.ts).
 */
export class PrimaryMetrics {
  readonly registry = new Registry();
  private readonly restarts: Counter<"cause">;
  private readonly rerouted: Counter;
  private readonly serving: Gauge;

  constructor() {
    const registers = [this.registry];
    this.restarts = new Counter({
      name: "orisun_worker_restarts_total",
      help: "Workers started again after one ended: exited (it died or was killed from outside) or stalled (killed by the primary after ORISUN_WORKER_STALL_TIMEOUT without its event loop running)",
      labelNames: ["cause"],
      registers,
    });
    // Both causes show from the start, at 0, so that a rate over them works before the first.
    for (const cause of ["exited", "stalled"] as const) this.restarts.inc({ cause }, 0);
    this.rerouted = new Counter({
      name: "orisun_connections_rerouted_total",
      help: "New connections handed to another worker because the one in turn had left a connection unconfirmed for over a second",
      registers,
    });
    this.serving = new Gauge({
      name: "orisun_workers_serving",
      help: "Workers the primary hands connections to now",
      registers,
    });
  }

  restarted(cause: RestartCause): void {
    this.restarts.inc({ cause });
  }

  reroutedConnection(): void {
    this.rerouted.inc();
  }

  setServing(count: number): void {
    this.serving.set(count);
  }
}
