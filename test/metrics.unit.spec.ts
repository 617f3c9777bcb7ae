import type pg from "pg";
import { describe, expect, it } from "vitest";
import { BoundaryLabels, Metrics, OTHER_BOUNDARIES } from "../server/observability/metrics.js";
import type { Position } from "../server/store/types.js";
import { has, parseExposition, sampleValue } from "./support/exposition.js";

const at = (prepare: number): Position => ({ commit: BigInt(prepare), prepare: BigInt(prepare) });

async function scrape(metrics: Metrics) {
  return parseExposition(await metrics.registry.metrics());
}

function attached(
  metrics: Metrics,
  sources: {
    feed?: Record<string, number>;
    heads?: (names: readonly string[]) => Promise<ReadonlyMap<string, bigint>>;
    pool?: pg.Pool;
  },
) {
  metrics.attach({
    pool: sources.pool,
    feedPosition: (b) => (sources.feed?.[b] === undefined ? undefined : at(sources.feed[b])),
    heads: sources.heads ?? (async () => new Map()),
  });
  return metrics;
}

describe("boundary labels", () => {
  it("names the first boundaries up to the cap and folds the rest into _other for good", () => {
    const labels = new BoundaryLabels(2);
    expect([labels.of("a"), labels.of("b"), labels.of("c"), labels.of("a")]).toEqual([
      "a",
      "b",
      OTHER_BOUNDARIES,
      "a",
    ]);
    expect(labels.of("d")).toBe(OTHER_BOUNDARIES);
    expect(new BoundaryLabels(0).of("a")).toBe(OTHER_BOUNDARIES);
  });
});

describe("Metrics", () => {
  it("counts batches, events, bytes and condition failures, folding boundaries past the cap", async () => {
    const metrics = new Metrics({ boundaryLabels: 1 });
    metrics.recordBatch("orders", { requests: 3, events: 5, bytes: 120, conditionFailures: 1 });
    metrics.recordBatch("users", { requests: 1, events: 2, bytes: 30, conditionFailures: 0 });
    metrics.recordBatch("carts", { requests: 2, events: 0, bytes: 0, conditionFailures: 2 });
    const s = await scrape(metrics);
    expect(sampleValue(s, "orisun_events_appended_total", { boundary: "orders" })).toBe(5);
    expect(sampleValue(s, "orisun_events_appended_total", { boundary: OTHER_BOUNDARIES })).toBe(2);
    expect(sampleValue(s, "orisun_appended_bytes_total", { boundary: "orders" })).toBe(120);
    expect(sampleValue(s, "orisun_appended_bytes_total", { boundary: OTHER_BOUNDARIES })).toBe(30);
    expect(sampleValue(s, "orisun_condition_failures_total", { boundary: "orders" })).toBe(1);
    expect(sampleValue(s, "orisun_condition_failures_total", { boundary: OTHER_BOUNDARIES })).toBe(
      2,
    );
    expect(sampleValue(s, "orisun_append_batch_requests_count")).toBe(3);
    expect(sampleValue(s, "orisun_append_batch_requests_sum")).toBe(6);
    expect(sampleValue(s, "orisun_append_batch_events_sum")).toBe(7);
    expect(sampleValue(s, "orisun_append_batch_events_bucket", { le: "1" })).toBe(1);
    expect(has(s, "orisun_events_appended_total", { boundary: "users" })).toBe(false);
  });

  it("counts open subscriptions and reports each boundary's largest lag in events", async () => {
    const feed: Record<string, number> = { b: 10, c: 4 };
    const metrics = attached(new Metrics({ boundaryLabels: 10 }), { feed });
    const first = metrics.subscriptions.opened("b", at(0));
    const second = metrics.subscriptions.opened("b", at(6));
    const third = metrics.subscriptions.opened("c", at(9));
    let s = await scrape(metrics);
    expect(sampleValue(s, "orisun_subscriptions_open")).toBe(3);
    expect(sampleValue(s, "orisun_subscription_lag_events", { boundary: "b" })).toBe(10);
    // Ahead of what the feed delivered (a client's own position): no negative lag.
    expect(sampleValue(s, "orisun_subscription_lag_events", { boundary: "c" })).toBe(0);
    first.sent(at(8));
    feed.b = 12;
    s = await scrape(metrics);
    expect(sampleValue(s, "orisun_subscription_lag_events", { boundary: "b" })).toBe(6);
    first.closed();
    second.closed();
    third.closed();
    s = await scrape(metrics);
    expect(sampleValue(s, "orisun_subscriptions_open")).toBe(0);
    expect(has(s, "orisun_subscription_lag_events")).toBe(false);
  });

  it("reports the publisher's lag against the heads, and leaves it out when they do not come in time", async () => {
    let heads = new Map([["b", 20n]]);
    let hang = false;
    const metrics = attached(new Metrics({ boundaryLabels: 10, headsTimeoutMs: 100 }), {
      heads: (names) => {
        expect(names).toEqual(["b"]);
        return hang ? new Promise(() => {}) : Promise.resolve(heads);
      },
    });
    let s = await scrape(metrics);
    expect(has(s, "orisun_publisher_lag_events")).toBe(false);
    metrics.publisher.published("b", at(15));
    s = await scrape(metrics);
    expect(sampleValue(s, "orisun_publisher_boundaries")).toBe(1);
    expect(sampleValue(s, "orisun_publisher_lag_events", { boundary: "b" })).toBe(5);
    heads = new Map([["b", 15n]]);
    s = await scrape(metrics);
    expect(sampleValue(s, "orisun_publisher_lag_events", { boundary: "b" })).toBe(0);
    hang = true;
    const started = Date.now();
    s = await scrape(metrics);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(has(s, "orisun_publisher_lag_events")).toBe(false);
    metrics.publisher.released("b");
    hang = false;
    s = await scrape(metrics);
    // Counters are read while the gauges collect: the failure shows from the next scrape on.
    expect(
      sampleValue(s, "orisun_metrics_collect_failures_total", { collector: "publisher_lag" }),
    ).toBe(1);
    expect(sampleValue(s, "orisun_publisher_boundaries")).toBe(0);
    expect(has(s, "orisun_publisher_lag_events")).toBe(false);
  });

  it("counts pub/sub messages published, delivered and redelivered", async () => {
    const metrics = new Metrics({ boundaryLabels: 10 });
    metrics.pubsub.published();
    metrics.pubsub.published();
    metrics.pubsub.delivered(false);
    metrics.pubsub.delivered(true);
    const s = await scrape(metrics);
    expect(sampleValue(s, "orisun_pubsub_published_total")).toBe(2);
    expect(sampleValue(s, "orisun_pubsub_delivered_total")).toBe(2);
    expect(sampleValue(s, "orisun_pubsub_redelivered_total")).toBe(1);
  });

  it("has pool gauges only with a PostgreSQL pool, read from it at scrape time", async () => {
    const without = await scrape(attached(new Metrics({ boundaryLabels: 1 }), {}));
    expect(has(without, "orisun_pg_pool_max")).toBe(false);
    const pool = { totalCount: 3, idleCount: 1, waitingCount: 0, options: { max: 10 } };
    const metrics = attached(new Metrics({ boundaryLabels: 1 }), {
      pool: pool as unknown as pg.Pool,
    });
    let s = await scrape(metrics);
    expect(sampleValue(s, "orisun_pg_pool_connections", { state: "in_use" })).toBe(2);
    expect(sampleValue(s, "orisun_pg_pool_connections", { state: "idle" })).toBe(1);
    expect(sampleValue(s, "orisun_pg_pool_max")).toBe(10);
    pool.waitingCount = 4;
    pool.idleCount = 0;
    s = await scrape(metrics);
    expect(sampleValue(s, "orisun_pg_pool_waiting")).toBe(4);
    expect(sampleValue(s, "orisun_pg_pool_connections", { state: "in_use" })).toBe(3);
  });

  it("includes the process metrics and the event-loop lag, in a registry of its own", async () => {
    const a = new Metrics({ boundaryLabels: 1 });
    const b = new Metrics({ boundaryLabels: 1 });
    a.pubsub.published();
    const s = await scrape(a);
    for (const name of [
      "nodejs_eventloop_lag_seconds",
      "nodejs_eventloop_lag_p99_seconds",
      "process_cpu_seconds_total",
      "process_resident_memory_bytes",
      "nodejs_heap_size_used_bytes",
    ]) {
      expect(has(s, name), name).toBe(true);
    }
    expect(sampleValue(await scrape(b), "orisun_pubsub_published_total")).toBe(0);
  });
});

describe("the exposition parser used by these tests", () => {
  it("refuses what Prometheus would refuse", () => {
    expect(() => parseExposition("# TYPE x counter\nx 1\n")).not.toThrow();
    expect(() => parseExposition("x 1\n")).toThrow(/no TYPE/);
    expect(() => parseExposition("# TYPE x counter\nx{a=b} 1\n")).toThrow(/unquoted/);
    expect(() => parseExposition("# TYPE x counter\nx one\n")).toThrow(/bad sample value/);
    expect(() => parseExposition('# TYPE x counter\nx{a="\\q"} 1\n')).toThrow(/bad escape/);
    expect(() =>
      parseExposition(
        '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
      ),
    ).toThrow(/decrease/);
    expect(() => parseExposition("# TYPE x counter\nx 1")).toThrow(/line feed/);
  });
});
