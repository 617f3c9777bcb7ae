import type pg from "pg";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { PubSubObserver } from "../api/pubsub-handler.js";
import type { PublisherObserver } from "../broker/jetstream-publisher.js";
import type { BatchOutcome } from "../store/append-observer.js";
import type { Position } from "../store/types.js";
import type { SubscriptionObserver, SubscriptionProbe } from "../streaming/subscription.js";
import { RpcMetrics } from "./rpc-metrics.js";

/**
 * The label of boundaries past the cap. A boundary name starts with a letter, so no boundary is
 * called this.
 */
export const OTHER_BOUNDARIES = "_other";

/**
 * Boundary names as label values, bounded: the first `max` boundaries this process sees keep
 * their name for its lifetime, every later one is counted under OTHER_BOUNDARIES. Each labelled
 * name is a time series in Prometheus, and clients create boundaries on demand.
 */
export class BoundaryLabels {
  private readonly named = new Set<string>();

  constructor(private readonly max: number) {}

  of(boundary: string): string {
    if (this.named.has(boundary)) return boundary;
    if (this.named.size >= this.max) return OTHER_BOUNDARIES;
    this.named.add(boundary);
    return boundary;
  }
}

/** What the collectors read at scrape time; attached once the store and broker exist. */
export interface MetricSources {
  /** The PostgreSQL pool; undefined when embedded (PGlite has one session and no pool). */
  readonly pool: pg.Pool | undefined;
  /** The last position the process's live feed of the boundary delivered (see LiveFeeds). */
  readonly feedPosition: (boundary: string) => Position | undefined;
  /** The heads (last prepare position) of these boundaries, from the store. */
  readonly heads: (boundaries: readonly string[]) => Promise<ReadonlyMap<string, bigint>>;
  /** Embedded only: the data folder's disk, as the store's guard last read it (store/disk-space.ts). */
  readonly disk?: { readonly free: number; readonly minFree: number };
}

export interface MetricsOptions {
  /** ORISUN_METRICS_BOUNDARY_LABELS */
  readonly boundaryLabels: number;
  /** How long a scrape waits for the boundaries' heads before leaving the publisher lag out. */
  readonly headsTimeoutMs?: number;
}

/** Latency buckets from half a millisecond (a lone append) to an hour (a long subscription). */
const DURATION_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600,
];
const TRANSACTION_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];
const BATCH_REQUEST_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
const BATCH_EVENT_BUCKETS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 50_000];

/**
 * Every metric of the server, in a registry of its own (not prom-client's global one, so that two
 * servers in one process, as in tests, never mix). Counters move where the work happens, through
 * the observer interfaces the store, the live path and the API call; gauges of state (pool,
 * subscriptions, publisher lag) are read at scrape time, so they cost nothing between scrapes.
 */
export class Metrics {
  readonly registry = new Registry();
  private readonly boundaries: BoundaryLabels;
  private sources: MetricSources | undefined;
  private readonly probes = new Set<{ boundary: string; at: Position }>();
  /** Boundaries this process publishes -> the prepare position their stream holds through. */
  private readonly published = new Map<string, bigint>();
  private readonly headsTimeoutMs: number;

  /** orisun_rpc_duration_seconds and orisun_rpc_in_flight. */
  readonly rpc: RpcMetrics;
  private readonly eventsAppended: Counter<"boundary">;
  private readonly bytesAppended: Counter<"boundary">;
  private readonly conditionFailures: Counter<"boundary">;
  private readonly transactionDuration: Histogram;
  private readonly batchRequests: Histogram;
  private readonly batchEvents: Histogram;
  private readonly pubsubPublished: Counter;
  private readonly pubsubDelivered: Counter;
  private readonly pubsubRedelivered: Counter;
  private readonly collectFailures: Counter<"collector">;

  constructor(options: MetricsOptions) {
    this.boundaries = new BoundaryLabels(options.boundaryLabels);
    this.headsTimeoutMs = options.headsTimeoutMs ?? 1_000;
    const registers = [this.registry];
    // Event-loop lag (nodejs_eventloop_lag_*), heap, GC, handles, CPU, memory, open files.
    collectDefaultMetrics({ register: this.registry });

    this.rpc = new RpcMetrics(this.registry, DURATION_BUCKETS);
    this.eventsAppended = new Counter({
      name: "orisun_events_appended_total",
      help: `Events written, by boundary (the first ORISUN_METRICS_BOUNDARY_LABELS boundaries; the rest as ${OTHER_BOUNDARIES})`,
      labelNames: ["boundary"],
      registers,
    });
    this.bytesAppended = new Counter({
      name: "orisun_appended_bytes_total",
      help: "UTF-8 bytes of data and metadata written, by boundary",
      labelNames: ["boundary"],
      registers,
    });
    this.conditionFailures = new Counter({
      name: "orisun_condition_failures_total",
      help: "Appends refused because their DCB condition failed, by boundary",
      labelNames: ["boundary"],
      registers,
    });
    this.transactionDuration = new Histogram({
      name: "orisun_append_transaction_duration_seconds",
      help: "Duration of each group-commit transaction, from BEGIN to the end of COMMIT",
      buckets: TRANSACTION_BUCKETS,
      registers,
    });
    this.batchRequests = new Histogram({
      name: "orisun_append_batch_requests",
      help: "Append requests per group-commit transaction",
      buckets: BATCH_REQUEST_BUCKETS,
      registers,
    });
    this.batchEvents = new Histogram({
      name: "orisun_append_batch_events",
      help: "Events written per group-commit transaction (0 when all its requests were refused)",
      buckets: BATCH_EVENT_BUCKETS,
      registers,
    });
    this.pubsubPublished = new Counter({
      name: "orisun_pubsub_published_total",
      help: "Pub/sub messages accepted by PublishToPubSub (a republished id within the dedupe window included)",
      registers,
    });
    this.pubsubDelivered = new Counter({
      name: "orisun_pubsub_delivered_total",
      help: "Pub/sub messages written to a subscriber's stream",
      registers,
    });
    this.pubsubRedelivered = new Counter({
      name: "orisun_pubsub_redelivered_total",
      help: "Of those, messages the group had handed out before to a member that did not acknowledge them",
      registers,
    });
    this.collectFailures = new Counter({
      name: "orisun_metrics_collect_failures_total",
      help: "Scrapes that left a metric out because its source did not answer in time",
      labelNames: ["collector"],
      registers,
    });

    const metrics = this;
    new Gauge({
      name: "orisun_subscriptions_open",
      help: "SubscribeToEvents streams open in this process",
      registers,
      collect() {
        this.set(metrics.probes.size);
      },
    });
    new Gauge({
      name: "orisun_subscription_lag_events",
      help: "Events of the boundary between the furthest-behind subscription and the newest event this process knows, by boundary",
      labelNames: ["boundary"],
      aggregator: "max",
      registers,
      collect() {
        this.reset();
        for (const [label, lag] of metrics.subscriptionLags()) this.set({ boundary: label }, lag);
      },
    });
    new Gauge({
      name: "orisun_publisher_boundaries",
      help: "Boundaries this process publishes to JetStream now",
      registers,
      collect() {
        this.set(metrics.published.size);
      },
    });
    new Gauge({
      name: "orisun_publisher_lag_events",
      help: "Events committed but not yet confirmed in the boundary's JetStream stream (acks are asked for in bulk), by boundary this process publishes",
      labelNames: ["boundary"],
      aggregator: "max",
      registers,
      async collect() {
        this.reset();
        for (const [label, lag] of await metrics.publisherLags())
          this.set({ boundary: label }, lag);
      },
    });
  }

  /**
   * Connects the scrape-time collectors to the running store, feeds and pool. The pool's gauges
   * exist only with PostgreSQL: PGlite is one session in this process, with nothing to wait for
   * but the queue of transactions, whose effect shows in the append latencies.
   */
  attach(sources: MetricSources): void {
    if (this.sources) throw new Error("Metrics.attach: already attached");
    this.sources = sources;
    const registers = [this.registry];
    const disk = sources.disk;
    if (disk && disk.minFree > 0) {
      new Gauge({
        name: "orisun_data_disk_free_bytes",
        help: "Bytes free on the embedded store's data folder's file system, read every second; under orisun_data_disk_min_free_bytes appends and imports are refused",
        registers,
        collect() {
          this.set(disk.free);
        },
      });
      new Gauge({
        name: "orisun_data_disk_min_free_bytes",
        help: "ORISUN_DATA_MIN_FREE_BYTES: the free bytes under which the embedded store refuses writes",
        registers,
        collect() {
          this.set(disk.minFree);
        },
      });
    }
    const pool = sources.pool;
    if (!pool) return;
    new Gauge({
      name: "orisun_pg_pool_connections",
      help: "PostgreSQL connections of the pool, by state (in_use, idle)",
      labelNames: ["state"],
      registers,
      collect() {
        this.set({ state: "in_use" }, pool.totalCount - pool.idleCount);
        this.set({ state: "idle" }, pool.idleCount);
      },
    });
    new Gauge({
      name: "orisun_pg_pool_waiting",
      help: "Queries waiting for a free PostgreSQL connection of the pool",
      registers,
      collect() {
        this.set(pool.waitingCount);
      },
    });
    new Gauge({
      name: "orisun_pg_pool_max",
      help: "Most connections the PostgreSQL pool opens (ORISUN_PG_POOL_SIZE)",
      registers,
      collect() {
        this.set(pool.options.max);
      },
    });
  }

  /** Counts how this worker routed appends (process/boundary-owners.ts), read at each scrape. */
  attachRouting(counts: Readonly<Record<"forwarded" | "served" | "fellBack", number>>): void {
    new Counter({
      name: "orisun_appends_routed_total",
      help: "Appends this worker sent to the worker that commits their boundary (forwarded), committed for another worker (served), or committed here because their worker could not be reached (fell_back)",
      labelNames: ["route"],
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc({ route: "forwarded" }, counts.forwarded);
        this.inc({ route: "served" }, counts.served);
        this.inc({ route: "fell_back" }, counts.fellBack);
      },
    });
  }

  /** The append path's counters and histograms, after each transaction (observe-appends.ts). */
  recordBatch(boundary: string, outcome: BatchOutcome): void {
    this.batchRequests.observe(outcome.requests);
    this.batchEvents.observe(outcome.events);
    if (outcome.events === 0 && outcome.conditionFailures === 0) return;
    const label = this.boundaries.of(boundary);
    if (outcome.events > 0) {
      this.eventsAppended.inc({ boundary: label }, outcome.events);
      this.bytesAppended.inc({ boundary: label }, outcome.bytes);
    }
    if (outcome.conditionFailures > 0) {
      this.conditionFailures.inc({ boundary: label }, outcome.conditionFailures);
    }
  }

  recordTransaction(seconds: number): void {
    this.transactionDuration.observe(seconds);
  }

  readonly subscriptions: SubscriptionObserver = {
    opened: (boundary, after): SubscriptionProbe => {
      const probe = { boundary, at: after };
      this.probes.add(probe);
      return {
        sent: (position) => {
          probe.at = position;
        },
        closed: () => this.probes.delete(probe),
      };
    },
  };

  readonly publisher: PublisherObserver = {
    published: (boundary, position) => this.published.set(boundary, position.prepare),
    released: (boundary) => this.published.delete(boundary),
  };

  readonly pubsub: PubSubObserver = {
    published: () => this.pubsubPublished.inc(),
    delivered: (redelivered) => {
      this.pubsubDelivered.inc();
      if (redelivered) this.pubsubRedelivered.inc();
    },
  };

  /**
   * Per boundary label, the largest lag of its subscriptions: prepare positions grow by one per
   * event of a boundary, so the difference between the feed's last delivered position and what a
   * subscription sent last is the number of events it has still to go through (matching its
   * query or not).
   */
  private subscriptionLags(): Map<string, number> {
    const lags = new Map<string, number>();
    const feedPosition = this.sources?.feedPosition;
    if (!feedPosition) return lags;
    for (const probe of this.probes) {
      const newest = feedPosition(probe.boundary);
      const lag = newest ? Math.max(0, Number(newest.prepare - probe.at.prepare)) : 0;
      const label = this.boundaries.of(probe.boundary);
      lags.set(label, Math.max(lags.get(label) ?? 0, lag));
    }
    return lags;
  }

  /** Per boundary label, the largest lag of the boundaries this process publishes. */
  private async publisherLags(): Promise<Map<string, number>> {
    const lags = new Map<string, number>();
    const heads = this.sources?.heads;
    if (!heads || this.published.size === 0) return lags;
    const names = [...this.published.keys()];
    let found: ReadonlyMap<string, bigint>;
    let timer: NodeJS.Timeout | undefined;
    try {
      // A database that does not answer must not hold the scrape up: Prometheus would time out
      // and lose every other metric with it.
      found = await Promise.race([
        heads(names),
        new Promise<never>((_, fail) => {
          timer = setTimeout(() => fail(new Error("timed out")), this.headsTimeoutMs);
        }),
      ]);
    } catch {
      this.collectFailures.inc({ collector: "publisher_lag" });
      return lags;
    } finally {
      clearTimeout(timer);
    }
    for (const name of names) {
      const head = found.get(name);
      const through = this.published.get(name);
      if (head === undefined || through === undefined) continue;
      const lag = Math.max(0, Number(head - through));
      const label = this.boundaries.of(name);
      lags.set(label, Math.max(lags.get(label) ?? 0, lag));
    }
    return lags;
  }
}
