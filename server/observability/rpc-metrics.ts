import type { DescMethod } from "@bufbuild/protobuf";
import type { Registry } from "prom-client";

/** An RPC's labels: its service's full name and its method's name. */
export interface RpcLabels {
  readonly service: string;
  readonly method: string;
}

/** A metric as prom-client's Registry reads it from `get()` (what its own classes return). */
interface Snapshot {
  readonly name: string;
  readonly help: string;
  readonly type: "histogram" | "gauge";
  readonly aggregator: "sum";
  readonly values: {
    readonly metricName?: string;
    readonly labels: Readonly<Record<string, string | number>>;
    readonly value: number;
  }[];
}

/**
 * Registers a metric that is only its `get()`: all prom-client's Registry reads of a metric (its
 * cluster aggregation registers such objects itself), though its type names only its classes.
 */
function register(registry: Registry, name: string, get: () => Snapshot): void {
  registry.registerMetric({ name, get: async () => get() } as unknown as Parameters<
    Registry["registerMetric"]
  >[0]);
}

const DURATION = "orisun_rpc_duration_seconds";
const IN_FLIGHT = "orisun_rpc_in_flight";

interface Series {
  readonly labels: Readonly<Record<string, string>>;
  /** Observations per bucket, not cumulative; the last one is +Inf. */
  readonly counts: number[];
  sum: number;
  count: number;
}

interface MethodEntry {
  readonly labels: RpcLabels;
  running: number;
  readonly byCode: Map<string, Series>;
}

/**
 * RPC durations by service, method and code as a Prometheus histogram, and the RPCs running now
 * as a gauge, kept per method descriptor and turned into prom-client's metric format at scrape
 * time. prom-client's own Histogram and Gauge validate and hash the label set on every
 * observation: three times per call, a measurable part of a one-event append's CPU. Here a call
 * costs a map look-up by method, a look-up by code and a bucket search. Both metrics are
 * registered in `registry` like prom-client's, so scrapes, the cluster's aggregation (summed) and
 * the text format are the same.
 */
export class RpcMetrics {
  private readonly methods = new Map<DescMethod, MethodEntry>();

  constructor(
    registry: Registry,
    private readonly buckets: readonly number[],
  ) {
    register(registry, DURATION, () => this.durations());
    register(registry, IN_FLIGHT, () => this.running());
  }

  /** Counts an RPC of `method` as running until `ended`; gives its labels. */
  started(method: DescMethod): RpcLabels {
    const entry = this.entry(method);
    entry.running++;
    return entry.labels;
  }

  /** The RPC has ended with `code` after `seconds`. */
  ended(method: DescMethod, code: string, seconds: number): void {
    const entry = this.entry(method);
    entry.running--;
    this.observe(entry, code, seconds);
  }

  /** An RPC answered before it was counted as running (refused from its headers or body). */
  refused(method: DescMethod, code: string, seconds: number): void {
    this.observe(this.entry(method), code, seconds);
  }

  private entry(method: DescMethod): MethodEntry {
    let entry = this.methods.get(method);
    if (!entry) {
      entry = {
        labels: { service: method.parent.typeName, method: method.name },
        running: 0,
        byCode: new Map(),
      };
      this.methods.set(method, entry);
    }
    return entry;
  }

  private observe(entry: MethodEntry, code: string, seconds: number): void {
    let series = entry.byCode.get(code);
    if (!series) {
      series = {
        labels: { ...entry.labels, code },
        counts: new Array<number>(this.buckets.length + 1).fill(0),
        sum: 0,
        count: 0,
      };
      entry.byCode.set(code, series);
    }
    let bucket = 0;
    while (bucket < this.buckets.length && seconds > (this.buckets[bucket] as number)) bucket++;
    series.counts[bucket] = (series.counts[bucket] ?? 0) + 1;
    series.sum += seconds;
    series.count++;
  }

  private durations(): Snapshot {
    const values: Snapshot["values"] = [];
    for (const entry of this.methods.values()) {
      for (const series of entry.byCode.values()) {
        let cumulative = 0;
        series.counts.forEach((count, i) => {
          cumulative += count;
          const le = i < this.buckets.length ? (this.buckets[i] as number) : "+Inf";
          values.push({
            metricName: `${DURATION}_bucket`,
            labels: { ...series.labels, le },
            value: cumulative,
          });
        });
        values.push({ metricName: `${DURATION}_sum`, labels: series.labels, value: series.sum });
        values.push({
          metricName: `${DURATION}_count`,
          labels: series.labels,
          value: series.count,
        });
      }
    }
    return {
      name: DURATION,
      help: "RPCs by service, method and Connect code (ok for success), with their latency; a stream counts when it ends",
      type: "histogram",
      values,
      aggregator: "sum",
    };
  }

  private running(): Snapshot {
    const values: Snapshot["values"] = [];
    for (const entry of this.methods.values()) {
      values.push({ labels: { ...entry.labels }, value: entry.running });
    }
    return {
      name: IN_FLIGHT,
      help: "RPCs running now (open streams included)",
      type: "gauge",
      values,
      aggregator: "sum",
    };
  }
}
