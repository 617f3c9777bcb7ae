import { AggregatorRegistry, Gauge, Histogram, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { Admin } from "../gen/orisun/v1/admin_pb.js";
import { EventStore } from "../gen/orisun/v1/eventstore_pb.js";
import { RpcMetrics } from "../server/observability/rpc-metrics.js";
import { parseExposition, type Sample } from "./support/exposition.js";

const BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1, 1];
const SAVE = EventStore.method.saveEvents;
const SUBSCRIBE = EventStore.method.subscribeToEvents;
const WHO = Admin.method.whoAmI;
const labelsOf = (m: typeof SAVE | typeof SUBSCRIBE | typeof WHO) => ({
  service: m.parent.typeName,
  method: m.name,
});

/** What prom-client's own Histogram and Gauge expose for the same calls. */
function promClient() {
  const registry = new Registry();
  const duration = new Histogram({
    name: "orisun_rpc_duration_seconds",
    help: "RPCs by service, method and Connect code (ok for success), with their latency; a stream counts when it ends",
    labelNames: ["service", "method", "code"],
    buckets: BUCKETS,
    registers: [registry],
  });
  const inFlight = new Gauge({
    name: "orisun_rpc_in_flight",
    help: "RPCs running now (open streams included)",
    labelNames: ["service", "method"],
    registers: [registry],
  });
  return { registry, duration, inFlight };
}

/** The same observations, through RpcMetrics and through prom-client's classes. */
function observeBoth() {
  const ours = new Registry();
  const rpc = new RpcMetrics(ours, BUCKETS);
  const theirs = promClient();
  const calls: [typeof SAVE | typeof SUBSCRIBE | typeof WHO, string, number][] = [
    [SAVE, "ok", 0.0004],
    [SAVE, "ok", 0.0005], // on a bucket's bound: counted in it
    [SAVE, "ok", 0.003],
    [SAVE, "aborted", 0.02],
    [SAVE, "ok", 5], // past the last bound: +Inf only
    [WHO, "permission_denied", 0.0001],
    [SUBSCRIBE, "canceled", 12.5],
  ];
  for (const [method, code, seconds] of calls) {
    rpc.started(method);
    theirs.inFlight.inc(labelsOf(method));
    rpc.ended(method, code, seconds);
    theirs.inFlight.dec(labelsOf(method));
    theirs.duration.observe({ ...labelsOf(method), code }, seconds);
  }
  rpc.refused(SAVE, "invalid_argument", 0.0001);
  theirs.duration.observe({ ...labelsOf(SAVE), code: "invalid_argument" }, 0.0001);
  // Two subscriptions still open.
  for (let i = 0; i < 2; i++) {
    rpc.started(SUBSCRIBE);
    theirs.inFlight.inc(labelsOf(SUBSCRIBE));
  }
  return { ours, theirs: theirs.registry };
}

const sorted = (samples: Sample[]) =>
  samples
    .map((s) => `${s.name} ${JSON.stringify(Object.entries(s.labels).sort())} ${s.value}`)
    .sort();

describe("RpcMetrics", () => {
  it("exposes the same samples as prom-client's Histogram and Gauge would", async () => {
    const { ours, theirs } = observeBoth();
    const text = await ours.metrics();
    expect(sorted(parseExposition(text))).toEqual(sorted(parseExposition(await theirs.metrics())));
    expect(text).toContain("# TYPE orisun_rpc_duration_seconds histogram");
    expect(text).toContain("# TYPE orisun_rpc_in_flight gauge");
  });

  it("sums across registries as the cluster's aggregation does with prom-client's", async () => {
    const [a, b] = [observeBoth(), observeBoth()];
    const ours = AggregatorRegistry.aggregate([
      await a.ours.getMetricsAsJSON(),
      await b.ours.getMetricsAsJSON(),
    ]);
    const theirs = AggregatorRegistry.aggregate([
      await a.theirs.getMetricsAsJSON(),
      await b.theirs.getMetricsAsJSON(),
    ]);
    const samples = parseExposition(await ours.metrics());
    expect(sorted(samples)).toEqual(sorted(parseExposition(await theirs.metrics())));
    const running = samples.find(
      (s) => s.name === "orisun_rpc_in_flight" && s.labels.method === SUBSCRIBE.name,
    );
    expect(running?.value).toBe(4);
  });
});
