/**
 * `npm run build && node dist/bench/metrics-cost.js`: what the metrics cost an append. Two
 * servers on the local PostgreSQL, one with ORISUN_METRICS=off, take one client's 1-event appends
 * in alternating rounds (so that the load of a shared machine falls on both alike); prints each
 * round's median latency and the median of all. METRICS_COST_ROUNDS (6) rounds of
 * METRICS_COST_APPENDS (500) appends per server. Never part of `npm test`.
 */
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { EventStore } from "../gen/orisun/v1/eventstore_pb.js";
import { startServer } from "./server.js";
import { median } from "./workloads.js";

const PG_URL = process.env.BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const ROUNDS = Number(process.env.METRICS_COST_ROUNDS ?? 6);
const APPENDS = Number(process.env.METRICS_COST_APPENDS ?? 500);

async function main(): Promise<void> {
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
