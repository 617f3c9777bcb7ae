/**
 * `npm run bench`: spawns the built server against the local PostgreSQL and NATS, loads it over
 * gRPC, and prints a Markdown table. Never part of `npm test`. Sizes can be scaled with
 * BENCH_CATCHUP_EVENTS (default 200,000), BENCH_SECONDS (per timed workload, default 5) and
 * BENCH_RUNS (repetitions; medians are reported, default 3); BENCH_ONLY=append|catchup|pubsub|live
 * runs one group of workloads; BENCH_LIVE_RATE sets the live workload's append rate (1,000/s); BENCH_URL uses a server you started instead of spawning one.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { cpus, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { create } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { type Client, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { EventStore, SaveEventsRequestSchema } from "../gen/orisun/v1/eventstore_pb.js";

const PG_URL = process.env.BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const NATS_URL = process.env.BENCH_NATS_URL ?? "nats://127.0.0.1:4222";
const CATCHUP_EVENTS = Number(process.env.BENCH_CATCHUP_EVENTS ?? 200_000);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const ONLY = process.env.BENCH_ONLY;
const LIVE_RATE = Number(process.env.BENCH_LIVE_RATE ?? 1_000);
const runs = (group: string) => ONLY === undefined || ONLY === group;

type Api = Client<typeof EventStore>;

interface Server {
  readonly api: Api[];
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((done) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => done(typeof address === "object" && address ? address.port : 0));
    });
  });
}

/** The server in its own process, as in production; `connections` gRPC clients to spread load. */
async function startServer(env: Record<string, string>, connections = 4): Promise<Server> {
  const given = process.env.BENCH_URL;
  if (given) {
    // A server started by hand (e.g. under a profiler); its storage is its own business.
    const api = Array.from({ length: connections }, () =>
      createClient(EventStore, createGrpcTransport({ baseUrl: given })),
    );
    return { api, stop: async () => {} };
  }
  const port = await freePort();
  const child: ChildProcess = spawn(process.execPath, [resolve("dist/server/main.js")], {
    env: {
      PATH: process.env.PATH ?? "",
      ORISUN_LOG_LEVEL: "warn",
      ORISUN_PORT: String(port),
      ...env,
    },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const url = `http://127.0.0.1:${port}`;
  const probe = createClient(EventStore, createGrpcTransport({ baseUrl: url }));
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      await probe.getEvents({ boundary: "bench_probe", count: 1 });
      break;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await sleep(100);
    }
  }
  return {
    api: Array.from({ length: connections }, () =>
      createClient(EventStore, createGrpcTransport({ baseUrl: url })),
    ),
    async stop() {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      await exited;
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? Number.NaN;
};
const percentile = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? Number.NaN;
};

function event(id: string, tag: string, extra = "") {
  return {
    eventId: id,
    eventType: "Deposited",
    tags: [{ key: "account", value: tag }],
    data: `{"amount":1${extra}}`,
  };
}

/** `clients` loops appending one event each with a DCB condition on its own tag; events/s. */
async function conditionalAppends(api: Api[], clients: number, boundary: string): Promise<number> {
  let count = 0;
  const end = Date.now() + SECONDS * 1_000;
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      const client = api[c % api.length] as Api;
      const tag = `${boundary}-${c}`;
      let marker = { commitPosition: 0n, preparePosition: 0n };
      for (let i = 0; Date.now() < end; i++) {
        const result = await client.saveEvents(
          create(SaveEventsRequestSchema, {
            boundary,
            consistencyCondition: {
              consistencyMarker: marker,
              criteria: { criteria: [{ tags: [{ key: "account", value: tag }] }] },
            },
            events: [event(`${tag}-${i}`, tag)],
          }),
        );
        marker = result.logPosition ?? marker;
        count++;
      }
    }),
  );
  return count / SECONDS;
}

/** Loads `n` events in 1,000-event appends; returns events/s of the load. */
async function load(api: Api[], boundary: string, n: number): Promise<number> {
  const started = performance.now();
  const batches = Math.ceil(n / 1_000);
  let next = 0;
  await Promise.all(
    api.map(async (client) => {
      for (let b = next++; b < batches; b = next++) {
        const events = Array.from({ length: Math.min(1_000, n - b * 1_000) }, (_, i) =>
          event(`l${b}-${i}`, `acct-${i % 100}`),
        );
        await client.saveEvents({ boundary, events });
      }
    }),
  );
  return n / ((performance.now() - started) / 1_000);
}

/** Subscribes from the start and counts until `n` events arrived; events/s. */
async function catchUp(api: Api, boundary: string, n: number): Promise<number> {
  const abort = new AbortController();
  const started = performance.now();
  let seen = 0;
  for await (const _ of api.subscribeToEvents({ boundary }, { signal: abort.signal })) {
    if (++seen === n) break;
  }
  abort.abort();
  return n / ((performance.now() - started) / 1_000);
}

/** 50 subscribers, writes at `rate` events/s; latency from append call to receipt, ms. */
async function liveLatency(
  api: Api[],
  boundary: string,
  subscribers: number,
  rate: number,
): Promise<{
  p50: number;
  p99: number;
  commitP50: number;
  commitP99: number;
  appendP99: number;
  delivered: number;
}> {
  const abort = new AbortController();
  const latencies: number[] = [];
  /** From the transaction's date_created (set inside the commit) to receipt: the broker's share. */
  const sinceCommit: number[] = [];
  const appendLatencies: number[] = [];
  const sentAt = new Map<string, number>();
  let ready = 0;
  const subs = Array.from({ length: subscribers }, async (_, s) => {
    const stream = (api[s % api.length] as Api).subscribeToEvents(
      { boundary },
      { signal: abort.signal },
    );
    ready++;
    try {
      for await (const e of stream) {
        const t = sentAt.get(e.eventId);
        if (t !== undefined) latencies.push(performance.now() - t);
        if (e.dateCreated) sinceCommit.push(Date.now() - timestampMs(e.dateCreated));
      }
    } catch {
      // Cancelled at the end.
    }
  });
  while (ready < subscribers) await sleep(10);
  await sleep(500);
  const total = rate * SECONDS;
  const tick = 10;
  const perTick = Math.max(1, Math.round((rate * tick) / 1_000));
  const writes: Promise<unknown>[] = [];
  const start = performance.now();
  for (let i = 0; i < total; ) {
    const due = start + (i / rate) * 1_000;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    for (let k = 0; k < perTick && i < total; k++, i++) {
      const id = `live-${i}`;
      const at = performance.now();
      sentAt.set(id, at);
      writes.push(
        (api[i % api.length] as Api)
          .saveEvents({ boundary, events: [event(id, "x")] })
          .then(() => appendLatencies.push(performance.now() - at)),
      );
    }
  }
  await Promise.all(writes);
  const deadline = Date.now() + 10_000;
  while (latencies.length < total * subscribers && Date.now() < deadline) await sleep(50);
  abort.abort();
  await Promise.all(subs);
  return {
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    commitP50: percentile(sinceCommit, 50),
    commitP99: percentile(sinceCommit, 99),
    appendP99: percentile(appendLatencies, 99),
    delivered: latencies.length / (total * subscribers),
  };
}

/**
 * Pub/sub through one group of 4 members: publishers keep `inFlight` publishes going for
 * SECONDS; throughput counts messages received, latency runs from the publish call to receipt.
 */
async function pubsub(
  api: Api[],
  inFlight: number,
): Promise<{ rate: number; p50: number; p99: number }> {
  const abort = new AbortController();
  const sentAt = new Map<string, number>();
  const latencies: number[] = [];
  const members = Array.from({ length: 4 }, async (_, m) => {
    try {
      const stream = (api[m % api.length] as Api).subscribeToPubSub(
        { subject: "bench.>", consumerName: "bench_group" },
        { signal: abort.signal },
      );
      for await (const { message } of stream) {
        const t = message ? sentAt.get(message.id) : undefined;
        if (t !== undefined) latencies.push(performance.now() - t);
      }
    } catch {
      // Cancelled at the end.
    }
  });
  await sleep(1_000);
  const data = new TextEncoder().encode('{"order":42,"total":"19.99"}');
  let sent = 0;
  const started = performance.now();
  const end = Date.now() + SECONDS * 1_000;
  await Promise.all(
    Array.from({ length: inFlight }, async (_, c) => {
      const client = api[c % api.length] as Api;
      for (let i = 0; Date.now() < end; i++) {
        const id = `p${c}-${i}`;
        sentAt.set(id, performance.now());
        await client.publishToPubSub({ id, subject: "bench.orders", data });
        sent++;
      }
    }),
  );
  const deadline = Date.now() + 10_000;
  while (latencies.length < sent && Date.now() < deadline) await sleep(20);
  const elapsed = (performance.now() - started) / 1_000;
  abort.abort();
  await Promise.all(members);
  return {
    rate: latencies.length / elapsed,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
  };
}

async function dropSchema(schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: PG_URL });
  await client.connect();
  await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  await client.end();
}

interface Row {
  workload: string;
  value: string;
}

async function main(): Promise<void> {
  const rows: Row[] = [];
  const results = new Map<string, number[]>();
  const note = (name: string, value: number) => {
    results.set(name, [...(results.get(name) ?? []), value]);
  };
  for (let run = 0; run < RUNS; run++) {
    const schema = `bench_${Date.now().toString(36)}`;
    const server = await startServer({
      ORISUN_PG_URL: PG_URL,
      ORISUN_PG_SCHEMA: schema,
      ORISUN_NATS_URL: NATS_URL,
      ORISUN_DATA_DIR: mkdtempSync(join(tmpdir(), "orisun-bench-")),
    });
    try {
      for (const clients of runs("append") ? [1, 16, 64] : []) {
        note(
          `conditional 1-event appends, ${clients} clients (events/s)`,
          await conditionalAppends(server.api, clients, `cond${clients}`),
        );
      }
      if (runs("catchup")) {
        note(
          "load in 1,000-event appends (events/s)",
          await load(server.api, "big", CATCHUP_EVENTS),
        );
        note(
          `catch-up subscription over ${CATCHUP_EVENTS.toLocaleString("en")} events (events/s)`,
          await catchUp(server.api[0] as Api, "big", CATCHUP_EVENTS),
        );
      }
      if (runs("pubsub")) {
        const ps = await pubsub(server.api, 16);
        note("pub/sub through one group of 4 members, 16 publishers (messages/s)", ps.rate);
        note("pub/sub latency p50, publish to receipt (ms)", ps.p50);
        note("pub/sub latency p99, publish to receipt (ms)", ps.p99);
      }
      if (runs("live")) {
        const live = await liveLatency(server.api, "live", 50, LIVE_RATE);
        note(
          `live latency p50, append call to receipt, 50 subscribers at ${LIVE_RATE.toLocaleString("en")} events/s (ms)`,
          live.p50,
        );
        note("live latency p99, append call to receipt (ms)", live.p99);
        note("live latency p50, commit to receipt (ms)", live.commitP50);
        note("live latency p99, commit to receipt (ms)", live.commitP99);
        note("append latency p99 during the live run (ms)", live.appendP99);
        note("live deliveries received (fraction)", live.delivered);
      }
    } finally {
      await server.stop();
      await dropSchema(schema);
    }
  }
  for (const [name, values] of results) {
    const m = median(values);
    rows.push({
      workload: name,
      value: m >= 100 ? Math.round(m).toLocaleString("en") : m.toFixed(2),
    });
  }
  console.log(
    `\nOrisun benchmark: median of ${RUNS} runs, ${SECONDS} s per timed workload; ${cpus().length} × ${cpus()[0]?.model ?? "CPU"}, ${Math.round(totalmem() / 2 ** 30)} GiB; server and load generator on the same machine; PostgreSQL + NATS JetStream.\n`,
  );
  console.log("| workload | median |\n| --- | ---: |");
  for (const row of rows) console.log(`| ${row.workload} | ${row.value} |`);
}

await main();
