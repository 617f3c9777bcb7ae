/**
 * `npm run build && node dist/bench/metrics-cost.js`: what the metrics cost an append. Two
 * servers on the local PostgreSQL, one with ORISUN_METRICS=off, take one client's 1-event appends
 * in alternating rounds (so that the load of a shared machine falls on both alike); prints each
 * round's median latency and the median of all. METRICS_COST_ROUNDS (6) rounds of
 * METRICS_COST_APPENDS (500) appends per server. First, in this process, the CPU time the
 * instrumentation of one append takes (the RPC interceptor, the transaction hook and the batch
 * counters, run as the server runs them), which a busy machine disturbs far less than latencies.
 * Never part of `npm test`.
 */
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { EventStore } from "../gen/orisun/v1/eventstore_pb.js";
import { Metrics } from "../server/observability/metrics.js";
import { observeAppends } from "../server/observability/observe-appends.js";
import { rpcInterceptor } from "../server/observability/rpc-interceptor.js";
import { startServer } from "./server.js";
import { PG_URL } from "./server-data.js";
import { median } from "./workloads.js";

const ROUNDS = Number(process.env.METRICS_COST_ROUNDS ?? 6);
const APPENDS = Number(process.env.METRICS_COST_APPENDS ?? 500);

/** Microseconds of CPU one append's instrumentation takes, the median of 5 runs of 100,000. */
async function instrumentationMicros(): Promise<number> {
  const metrics = new Metrics({ boundaryLabels: 100 });
  const appends = observeAppends(metrics, undefined);
  const interceptor = rpcInterceptor(metrics, undefined);
  if (!appends || !interceptor) throw new Error("metrics are on: both hooks must exist");
  const outcome = { requests: 1, events: 1, bytes: 7, conditionFailures: 0 };
  // What Connect hands an interceptor for a unary call, as far as the interceptor reads it.
  const req = {
    service: { typeName: "orisun.v1.EventStore" },
    method: { name: "SaveEvents" },
    signal: new AbortController().signal,
  } as unknown as Parameters<Parameters<typeof interceptor>[0]>[0];
  const call = interceptor(async () => {
    await appends.transaction("cost", 1, async () => 1);
    appends.committed("cost", outcome);
    return { stream: false } as unknown as Awaited<ReturnType<Parameters<typeof interceptor>[0]>>;
  });
  // The same awaits without the instrumentation, subtracted.
  const bare = async () => {
    await (async () => 1)();
    return { stream: false };
  };
  const cpuPerCall = async (f: () => Promise<unknown>) => {
    const runs: number[] = [];
    for (let run = 0; run < 5; run++) {
      const n = 100_000;
      const started = process.cpuUsage();
      for (let i = 0; i < n; i++) await f();
      const used = process.cpuUsage(started);
      runs.push((used.user + used.system) / n);
    }
    return median(runs);
  };
  return (await cpuPerCall(() => call(req))) - (await cpuPerCall(bare));
}

async function main(): Promise<void> {
  console.log(
    `in process: instrumentation of one append ${(await instrumentationMicros()).toFixed(2)} µs of CPU`,
  );
  const variants = [
    { name: "metrics on", schema: `metrics_cost_on_${process.pid}`, env: { ORISUN_METRICS: "on" } },
    {
      name: "metrics off",
      schema: `metrics_cost_off_${process.pid}`,
      env: { ORISUN_METRICS: "off" },
    },
  ];
  const servers = await Promise.all(
    variants.map((v) =>
      startServer({ ORISUN_PG_URL: PG_URL, ORISUN_PG_SCHEMA: v.schema, ...v.env }),
    ),
  );
  const latencies: number[][] = variants.map(() => []);
  try {
    const clients = servers.map((s) =>
      createClient(EventStore, createGrpcTransport({ baseUrl: s.url })),
    );
    let n = 0;
    const append = (i: number) =>
      clients[i]?.saveEvents({
        boundary: "cost",
        events: [{ eventId: `e${n++}`, eventType: "Measured", data: '{"n":1}' }],
      });
    // Warm-up: connections, JIT, the boundary's row.
    for (let k = 0; k < 100; k++) for (const i of variants.keys()) await append(i);
    for (let round = 0; round < ROUNDS; round++) {
      for (const i of round % 2 === 0 ? [0, 1] : [1, 0]) {
        const times: number[] = [];
        for (let k = 0; k < APPENDS; k++) {
          const started = performance.now();
          await append(i);
          times.push(performance.now() - started);
        }
        latencies[i]?.push(...times);
        console.log(
          `round ${round + 1} ${variants[i]?.name}: median ${median(times).toFixed(3)} ms`,
        );
      }
    }
    for (const [i, v] of variants.entries()) {
      console.log(
        `${v.name}: median ${median(latencies[i] ?? []).toFixed(3)} ms over ${latencies[i]?.length} appends`,
      );
    }
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
    const client = new pg.Client({ connectionString: PG_URL });
    await client.connect();
    for (const v of variants) await client.query(`DROP SCHEMA IF EXISTS "${v.schema}" CASCADE`);
    await client.end();
  }
}

await main();
