/**
 * `npm run bench`: spawns the built server against the local PostgreSQL and NATS (and once on its
 * embedded default), loads it over gRPC from worker processes, measures the references (pgbench,
 * COPY, Emmett) on the same database, and prints a Markdown table of medians with each result's
 * ratio to its reference. Never part of `npm test`.
 *
 * BENCH_RUNS (3) repetitions; BENCH_SECONDS (5) per timed workload; BENCH_CATCHUP_EVENTS
 * (1,000,000) in the boundary that paging reads, catch-up and COPY share; BENCH_LIVE_RATE (1,000)
 * appends/s under 50 live subscribers after BENCH_LIVE_WARMUP_SECONDS (2) of the same load that are
 * not timed; BENCH_MEMORY_SECONDS (600) for the memory run;
 * BENCH_WORKERS (one per core) load-generator processes; BENCH_BACKUP_EVENTS (100,000) that the
 * CLI exports and imports; BENCH_ONLY=group[,group…] with groups append, auth, live, pubsub,
 * reads, catchup, embedded, memory, references, emmett, plans, workers (1 vs one server process
 * per core, ORISUN_WORKERS; other groups run one), backup; BENCH_URL uses a
 * server you started (its schema for COPY: BENCH_URL_PG_SCHEMA, default public);
 * BENCH_SERVER_NODE_OPTIONS (e.g. --cpu-prof) goes to the spawned servers; BENCH_CLIENT=grpc-js
 * sends SaveEvents with @grpc/grpc-js instead of lean-grpc.ts's client.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { cpus, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { decodeEvents } from "../server/broker/jetstream.js";
import { AUTH_ON_ENV, benchWriter } from "./auth-cost.js";
import { exportRate, importRate } from "./backup.js";
import { pgliteCommitCost } from "./pglite-commits.js";
import { queryPlans } from "./plans.js";
import {
  copyRate,
  diskSyncRate,
  Emmett,
  ensureEmmett,
  Pgbench,
  quiesce,
  sql,
} from "./references.js";
import {
  CORES,
  givenServer,
  mainThreadSchedule,
  REFERENCE_HANDLERS,
  type ReferenceName,
  type Server,
  startServer,
} from "./server.js";
import { deploymentId, NATS_URL, PG_URL, removeServerData } from "./server-data.js";
import { Workers } from "./workers.js";
import {
  appends,
  type Cpu,
  catchUp,
  live,
  liveCapacity,
  load,
  lookups,
  measure,
  median,
  memory,
  paging,
  pubsub,
} from "./workloads.js";

const GIVEN_URL = process.env.BENCH_URL;
const GIVEN_SCHEMA = process.env.BENCH_URL_PG_SCHEMA ?? "public";
const BIG = Number(process.env.BENCH_CATCHUP_EVENTS ?? 1_000_000);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const LIVE_RATE = Number(process.env.BENCH_LIVE_RATE ?? 1_000);
const CATCHUP_WINDOW = 4 * 1024 * 1024;
const LIVE_SUBSCRIBERS = Number(process.env.BENCH_LIVE_SUBSCRIBERS ?? 50);
const LIVE_WARMUP = Number(process.env.BENCH_LIVE_WARMUP_SECONDS ?? 2);
/** Closed-loop append clients that find the appends' capacity with the live subscribers on. */
const LIVE_CAPACITY_CLIENTS = 64;
const MEMORY_SECONDS = Number(process.env.BENCH_MEMORY_SECONDS ?? 600);
const WORKERS = Number(process.env.BENCH_WORKERS ?? CORES);
const BACKUP_EVENTS = Number(process.env.BENCH_BACKUP_EVENTS ?? 100_000);
const PAGE = 1_000;
const GROUPS = [
  "append",
  "auth",
  "live",
  "pubsub",
  "reads",
  "catchup",
  "embedded",
  "references",
  "emmett",
  "memory",
  "plans",
  "workers",
  "backup",
];
const ONLY = process.env.BENCH_ONLY?.split(",").map((g) => g.trim());
for (const group of ONLY ?? []) {
  if (!GROUPS.includes(group))
    throw new Error(`BENCH_ONLY: no group "${group}"; groups: ${GROUPS.join(", ")}`);
}
const runs = (group: string) => ONLY === undefined || ONLY.includes(group);

/** One bench invocation: names its schemas, database and (with BENCH_URL) boundaries. */
const ID = Date.now().toString(36);

/** Sections of the table, in order. */
const ORISUN = 0;
const EMBEDDED = 1;
const MEMORY = 2;
const REFERENCE = 3;

interface Result {
  readonly label: string;
  readonly section: number;
  readonly values: number[];
  readonly cpu: Cpu[];
}
const results = new Map<string, Result>();

function note(key: string, section: number, label: string, value: number, cpu?: Cpu): void {
  const result = results.get(key) ?? { label, section, values: [], cpu: [] };
  results.set(key, result);
  result.values.push(value);
  if (cpu) result.cpu.push(cpu);
  console.log(`  ${label}: ${format(value)}${cpu ? `  (CPU ${formatCpu([cpu])})` : ""}`);
}

const clientCount = (n: number) => `${n} client${n === 1 ? "" : "s"}`;
const format = (x: number) =>
  !Number.isFinite(x)
    ? "—"
    : Math.abs(x) >= 100
      ? Math.round(x).toLocaleString("en")
      : x.toFixed(x >= 10 ? 1 : 2);
const percent = (xs: (number | undefined)[]) => {
  const known = xs.filter((x): x is number => x !== undefined);
  return known.length === 0 ? "—" : `${Math.round(median(known))}`;
};
const formatCpu = (cpu: Cpu[]) =>
  `${percent(cpu.map((c) => c.generator))} / ${percent(cpu.map((c) => c.server))} / ${percent(cpu.map((c) => c.machine))}`;

/** A result's ratio to a reference (another result, or a fixed number) and the issue's target. */
interface Comparison {
  readonly key: string;
  /** Another result's key and a short name for it, or a fixed value. */
  readonly reference: { key: string; name: string } | { name: string; value: number };
  readonly target?: { op: ">=" | "<" | "<="; ratio: number; text: string };
}
const comparisons: Comparison[] = [
  ...[1, 16].map(
    (n): Comparison => ({
      key: `auth.on${n}`,
      reference: { key: `auth.off${n}`, name: `auth off, ${clientCount(n)}` },
      target: { op: ">=", ratio: 0.95, text: "≥ 0.95×" },
    }),
  ),
  ...[1, 16, 64].flatMap((n): Comparison[] => [
    {
      key: `cond${n}`,
      reference: { key: `pgbench1x${n}`, name: `pgbench 1 row/tx, ${clientCount(n)}` },
      // Issue 14's targets.
      target:
        n === 1
          ? { op: ">=", ratio: 0.33, text: "≥ 0.33×" }
          : n === 64
            ? { op: ">=", ratio: 0.3, text: "≥ 0.3×" }
            : undefined,
    },
    {
      key: `cond${n}`,
      reference: {
        key: `pgbench1x${n}.orisun`,
        name: `pgbench 1 row/tx into orisun_events' twin, ${clientCount(n)}`,
      },
    },
    {
      key: `cond${n}`,
      // The most one process of this stack answers: Node's HTTP/2, Fastify and Connect alone.
      reference: { key: `trivial${n}`, name: `a trivial handler, ${clientCount(n)}` },
    },
    {
      key: `cond${n}`,
      // The least any durable append on Node costs: an HTTP/2 answer after one committed row.
      reference: {
        key: `bare-commit${n}`,
        name: `a bare HTTP/2 handler committing a row, ${clientCount(n)}`,
      },
    },
    {
      key: `cond${n}`,
      reference: { key: `emmett${n}`, name: `Emmett, ${clientCount(n)}` },
      target: { op: ">=", ratio: 1.5, text: "≥ 1.5×" },
    },
    {
      key: `bare-commit${n}`,
      // Below the pgbench target here, no append server in Node could meet it on this machine.
      reference: { key: `pgbench1x${n}`, name: `pgbench 1 row/tx, ${clientCount(n)}` },
    },
  ]),
  // The ceiling of appends through Orisun's store: nothing of the server around it.
  ...[1, 16, 64].flatMap((n): Comparison[] => [
    {
      key: `cond${n}`,
      reference: {
        key: `bare-store${n}`,
        name: `a bare HTTP/2 handler appending through Orisun's store, ${clientCount(n)}`,
      },
    },
    {
      key: `bare-store${n}`,
      reference: { key: `emmett${n}`, name: `Emmett, ${clientCount(n)}` },
    },
  ]),
  // The ceiling of a lone append that runs Orisun's statement: nothing of Orisun but it.
  {
    key: "cond1",
    reference: {
      key: "bare-append1",
      name: "a bare HTTP/2 handler running Orisun's statement, 1 client",
    },
  },
  {
    key: "bare-append1",
    reference: { key: "pgbench1x1", name: "pgbench 1 row/tx, 1 client" },
  },
  {
    key: "cond100x16",
    reference: { key: "pgbench100x16", name: "pgbench 100 rows/tx, 16 clients" },
    target: { op: ">=", ratio: 0.6, text: "≥ 0.6×" },
  },
  {
    key: "cond100x16",
    reference: {
      key: "pgbench1600x1.orisun",
      name: "pgbench 1,600 rows/tx, 1 client, into orisun_events' twin (one boundary's ceiling)",
    },
  },
  {
    key: "pgbench1600x1.orisun",
    reference: { key: "pgbench100x16", name: "pgbench 100 rows/tx, 16 clients" },
  },
  { key: "uncond64", reference: { key: "pgbench1x64", name: "pgbench 1 row/tx, 64 clients" } },
  { key: "paging", reference: { key: "copy", name: "COPY" } },
  ...["catchup", "catchup.window"].map(
    (key): Comparison => ({
      key,
      reference: { key: "copy", name: "COPY" },
      target: { op: ">=", ratio: 0.25, text: "≥ 0.25×" },
    }),
  ),
  ...["live.p99", "live.commitP99"].map(
    (key): Comparison => ({
      key,
      reference: { name: "100 ms", value: 100 },
      target: { op: "<=", ratio: 1, text: "≤ 100 ms" },
    }),
  ),
  // How near capacity the live workload runs: below 1×, it asks for more than the server appends.
  {
    key: "live.capacity",
    reference: {
      name: `the live workload's ${LIVE_RATE.toLocaleString("en")} appends/s`,
      value: LIVE_RATE,
    },
  },
  ...[1, 16, 64].map((n) => ({
    key: `embedded${n}`,
    reference: { key: `cond${n}`, name: `on PostgreSQL, ${clientCount(n)}` },
  })),
  // One client's appends each wait for a sync of their own; more clients share one per batch.
  ...[1, 16, 64].map((n) => ({
    key: `embedded${n}`,
    reference: { key: "disksync", name: "fsyncs/s of the disk" },
  })),
  ...[16, 64].map((n) => ({
    key: `workers${CORES}x${n}`,
    reference: { key: `workers1x${n}`, name: `ORISUN_WORKERS=1, ${clientCount(n)}` },
  })),
  {
    key: `workers${CORES}x16spread`,
    reference: { key: "workers1x16spread", name: "ORISUN_WORKERS=1, 16 clients, 16 boundaries" },
  },
  {
    key: "pglite.durable",
    reference: { key: "pglite.shipped", name: "as shipped, no sync" },
  },
  ...["export", "import"].map((key) => ({
    key,
    reference: { name: "50,000 events/s", value: 50_000 },
    target: { op: ">=" as const, ratio: 1, text: "≥ 50,000 events/s" },
  })),
  ...[1, 16, 64].map(
    (n): Comparison => ({
      key: `cpu.cond${n}`,
      reference: { key: `cpu.trivial${n}`, name: `a trivial handler, ${clientCount(n)}` },
      target: { op: "<=", ratio: 1.5, text: "≤ 1.5×" },
    }),
  ),
  // What one database round trip alone adds to the trivial handler, what a JetStream publish adds
  // to that (the floor of a lone append: both round trips and nothing else), and an append to it.
  ...[1, 16, 64].flatMap((n): Comparison[] => [
    {
      key: `cpu.select1${n}`,
      reference: { key: `cpu.trivial${n}`, name: `a trivial handler, ${clientCount(n)}` },
    },
    {
      key: `cpu.floor${n}`,
      // Above 1.5× here, an append that stores and publishes on its own cannot meet the target.
      reference: { key: `cpu.trivial${n}`, name: `a trivial handler, ${clientCount(n)}` },
    },
    {
      key: `cpu.cond${n}`,
      reference: { key: `cpu.select1${n}`, name: `a SELECT 1 handler, ${clientCount(n)}` },
    },
    {
      key: `cpu.cond${n}`,
      reference: {
        key: `cpu.floor${n}`,
        name: `a SELECT 1 + JetStream publish handler, ${clientCount(n)}`,
      },
    },
    {
      key: `cpu.bare-commit${n}`,
      reference: { key: `cpu.trivial${n}`, name: `a trivial handler, ${clientCount(n)}` },
    },
  ]),
  {
    key: "rss.ratio",
    reference: { name: "flat", value: 1 },
    target: { op: "<=", ratio: 1.1, text: "flat (≤ 1.10×)" },
  },
];

async function machine(): Promise<string> {
  const { rows } = await sql(PG_URL, "SHOW server_version");
  const version = String(rows[0]?.server_version ?? "?").split(" ")[0];
  return [
    `${cpus()[0]?.model.trim() ?? "CPU"}, ${CORES} cores`,
    `${Math.round(totalmem() / 2 ** 30)} GiB RAM`,
    `PostgreSQL ${version}`,
    `Node ${process.version}`,
  ].join("; ");
}

/**
 * Waits until the boundary's JetStream publisher has copied it up to its head, so that it does not
 * compete with what is measured next. A publisher that finds its stream new starts at the head
 * (history is served from the store), so a stream made mid-load holds only the rest; one whose
 * stream stops growing for 5 s short of the head is taken as done too. Seconds waited, messages.
 */
async function publisherCatchUp(
  schema: string,
  boundary: string,
): Promise<{ seconds: number; messages: number }> {
  const { rows } = await sql(
    PG_URL,
    `SELECT last_prepare FROM "${schema}".orisun_boundaries WHERE name = '${boundary}'`,
  );
  const head = String(rows[0]?.last_prepare);
  const stream = `ORISUN_EVENTS_${await deploymentId(PG_URL, schema)}_${boundary}`;
  const nc = await connect({ servers: NATS_URL });
  const started = performance.now();
  let messages = 0;
  try {
    const jsm = await jetstreamManager(nc);
    let grewAt = performance.now();
    while (performance.now() - grewAt < 5_000) {
      const seq = (await jsm.streams.info(stream).catch(() => undefined))?.state.last_seq ?? 0;
      if (seq > messages) {
        messages = seq;
        grewAt = performance.now();
        const last = await jsm.streams.getMessage(stream, { seq });
        const prepare = last ? decodeEvents(last.data).at(-1)?.position.prepare : undefined;
        if (String(prepare) === head) break;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  } finally {
    await nc.close();
  }
  return { seconds: (performance.now() - started) / 1_000, messages };
}

/** A server on PostgreSQL + NATS in a fresh schema (or BENCH_URL); removes its data when stopped. */
async function postgresServer(schema: string, env: Record<string, string> = {}): Promise<Server> {
  if (GIVEN_URL) return givenServer(GIVEN_URL);
  const dir = mkdtempSync(join(tmpdir(), "orisun-bench-"));
  const server = await startServer({
    ORISUN_PG_URL: PG_URL,
    ORISUN_PG_SCHEMA: schema,
    ORISUN_NATS_URL: NATS_URL,
    ORISUN_DATA_DIR: dir,
    ORISUN_WORKERS: "1",
    ...env,
  });
  return {
    ...server,
    async stop() {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
      await removeServerData(PG_URL, NATS_URL, schema);
    },
  };
}

/**
 * Conditional 1-event appends against a server with authentication off and one with it on (a
 * non-admin user's password on every call), both up at once: each client count's SECONDS are
 * cut into bursts of about a second that alternate between them (off, on, on, off, …), so that
 * the ratio compares one machine state rather than two moments (this machine's speed moves by 2×
 * within minutes). A side's rate and CPU are the means over its bursts.
 */
async function authGroup(workers: Workers, run: number): Promise<void> {
  const off = await postgresServer(`bench_${ID}_auth_off_${run}`, {});
  const on = await postgresServer(`bench_${ID}_auth_on_${run}`, AUTH_ON_ENV);
  try {
    const sides = [
      { mode: "off", server: off, authorization: undefined },
      { mode: "on", server: on, authorization: await benchWriter(on.url) },
    ];
    const bursts = Math.max(2, Math.round(SECONDS));
    for (const clients of [1, 16]) {
      const measured = new Map(sides.map((side) => [side, [] as { result: number; cpu: Cpu }[]]));
      for (let b = 0; b < bursts; b++) {
        for (const side of b % 2 === 0 ? sides : [...sides].reverse()) {
          const { server, authorization } = side;
          const burst = await measure(workers, server.pid, () =>
            appends(workers, server.url, {
              // A boundary per burst: the clients start over with marker 0 and ids from 0.
              boundary: `auth_${clients}_${run}_${b}`,
              clients,
              eventsPerAppend: 1,
              conditional: true,
              seconds: SECONDS / bursts,
              ...(authorization === undefined ? {} : { authorization }),
            }),
          );
          measured.get(side)?.push(burst);
        }
      }
      for (const [{ mode }, all] of measured) {
        note(
          `auth.${mode}${clients}`,
          ORISUN,
          `auth ${mode}, conditional 1-event appends, ${clientCount(clients)} (events/s)`,
          mean(all.map((m) => m.result)),
          meanCpu(all.map((m) => m.cpu)),
        );
      }
    }
  } finally {
    await Promise.all([off.stop(), on.stop()]);
  }
}

const mean = (values: readonly number[]) => values.reduce((a, v) => a + v, 0) / values.length;

function meanCpu(cpus: readonly Cpu[]): Cpu {
  const of = (pick: (cpu: Cpu) => number | undefined) => {
    const values = cpus.map(pick);
    return values.every((v) => v !== undefined) ? mean(values as number[]) : undefined;
  };
  return {
    generator: of((c) => c.generator),
    server: of((c) => c.server),
    machine: mean(cpus.map((c) => c.machine)),
  };
}

/** With BENCH_URL, boundaries carry the invocation's id so that earlier data cannot interfere. */
const boundary = (name: string) => (GIVEN_URL ? `b${ID}_${name}` : name);

async function appendGroup(workers: Workers, server: Server, run: number): Promise<void> {
  const timed = async (key: string, label: string, o: Parameters<typeof appends>[2]) => {
    // The references are measured on a quiet database: so are the appends compared with them.
    if (!GIVEN_URL) await quiesce(PG_URL);
    const { result, cpu } = await measure(workers, server.pid, () =>
      appends(workers, server.url, o),
    );
    note(key, ORISUN, label, result, cpu);
    if (o.eventsPerAppend === 1 && o.conditional && cpu.server !== undefined) {
      note(
        `cpu.${key}`,
        ORISUN,
        `server CPU per append, ${label.replace(" (events/s)", "")} (µs)`,
        cpuPerCall(cpu.server, result),
      );
    }
  };
  const base = { eventsPerAppend: 1, conditional: true, seconds: SECONDS };
  // With the references group, the reference handlers run right after each client count, and
  // with the emmett group, Emmett too: a ratio then compares runs seconds apart, not minutes, on
  // a machine whose speed moves by 2x within minutes.
  const handlers = runs("references") ? await startReferenceHandlers() : [];
  const emmett = runs("emmett")
    ? await Emmett.create(PG_URL, `bench_${ID}_emmett_${run}`)
    : undefined;
  try {
    for (const clients of [1, 16, 64]) {
      await timed(
        `cond${clients}`,
        `conditional 1-event appends, ${clientCount(clients)} (events/s)`,
        {
          ...base,
          clients,
          boundary: boundary(`cond${clients}_${run}`),
        },
      );
      if (emmett) await measureEmmett(workers, emmett, clients);
      await measureReferenceHandlers(workers, handlers, clients);
    }
  } finally {
    await stopReferenceHandlers(handlers);
    await emmett?.drop();
  }
  await timed("cond100x16", "conditional 100-event appends, 16 clients (events/s)", {
    ...base,
    eventsPerAppend: 100,
    clients: 16,
    boundary: boundary(`cond100_${run}`),
  });
  await timed("uncond64", "unconditional 1-event appends, 64 clients (events/s)", {
    ...base,
    conditional: false,
    clients: 64,
    boundary: boundary(`uncond64_${run}`),
  });
}

/**
 * The same appends on one server process and on one per core (ORISUN_WORKERS), PostgreSQL + NATS:
 * all clients on one boundary (whose appends the processes take turns to commit), and each client
 * on a boundary of its own (where the processes never wait for each other).
 */
async function workersGroup(workers: Workers, run: number): Promise<void> {
  for (const processes of [1, CORES]) {
    const server = await postgresServer(`bench_${ID}_workers${processes}_${run}`, {
      ORISUN_WORKERS: String(processes),
    });
    try {
      for (const clients of [16, 64]) {
        const { result, cpu } = await measure(workers, server.pid, () =>
          appends(workers, server.url, {
            boundary: boundary(`workers${processes}_${clients}_${run}`),
            clients,
            eventsPerAppend: 1,
            conditional: true,
            seconds: SECONDS,
          }),
        );
        note(
          `workers${processes}x${clients}`,
          ORISUN,
          `conditional 1-event appends, ${clientCount(clients)}, ORISUN_WORKERS=${processes} (events/s)`,
          result,
          cpu,
        );
      }
      const { result, cpu } = await measure(workers, server.pid, () =>
        appends(workers, server.url, {
          boundary: boundary(`workers${processes}_spread_${run}`),
          boundaryPerClient: true,
          clients: 16,
          eventsPerAppend: 1,
          conditional: true,
          seconds: SECONDS,
        }),
      );
      note(
        `workers${processes}x16spread`,
        ORISUN,
        `conditional 1-event appends, 16 clients on 16 boundaries, ORISUN_WORKERS=${processes} (events/s)`,
        result,
        cpu,
      );
    } finally {
      await server.stop();
    }
  }
}

async function liveGroup(workers: Workers, server: Server, run: number): Promise<void> {
  const schedule0 = server.pid === undefined ? undefined : mainThreadSchedule(server.pid);
  const started = performance.now();
  const { result, cpu } = await measure(workers, server.pid, () =>
    live(
      workers,
      server.url,
      boundary(`live_${run}`),
      LIVE_SUBSCRIBERS,
      LIVE_RATE,
      LIVE_WARMUP,
      SECONDS,
    ),
  );
  const rate = LIVE_RATE.toLocaleString("en");
  if (server.pid !== undefined && schedule0) {
    const schedule1 = mainThreadSchedule(server.pid);
    const wall = (performance.now() - started) / 1_000;
    note(
      "live.mainRunning",
      ORISUN,
      "live, same run: the server's event loop on a core (% of the time)",
      (100 * (schedule1.running - schedule0.running)) / wall,
    );
    note(
      "live.mainWaiting",
      ORISUN,
      "live, same run: the server's event loop ready but waiting for a core (% of the time)",
      (100 * (schedule1.waiting - schedule0.waiting)) / wall,
    );
  }
  note(
    "live.p50",
    ORISUN,
    `live, ${LIVE_SUBSCRIBERS} subscribers at ${rate} appends/s: append call to receipt p50 (ms)`,
    result.p50,
    cpu,
  );
  note("live.p99", ORISUN, "live, same run: append call to receipt p99 (ms)", result.p99);
  note("live.commitP50", ORISUN, "live, same run: commit to receipt p50 (ms)", result.commitP50);
  note("live.commitP99", ORISUN, "live, same run: commit to receipt p99 (ms)", result.commitP99);
  note("live.appendP99", ORISUN, "live, same run: append latency p99 (ms)", result.appendP99);
  note(
    "live.delivered",
    ORISUN,
    "live, same run: deliveries received (fraction)",
    result.delivered,
  );
  note(
    "live.warmupP99",
    ORISUN,
    `live, same run: append call to receipt p99 in the ${LIVE_WARMUP} s warm-up before (ms)`,
    result.warmupP99,
  );
  // The same appends with nobody subscribed: what the appends alone cost the call-to-receipt.
  const alone = await measure(workers, server.pid, () =>
    live(workers, server.url, boundary(`alone_${run}`), 0, LIVE_RATE, LIVE_WARMUP, SECONDS),
  );
  note(
    "live.aloneP99",
    ORISUN,
    `the same ${rate} appends/s without subscribers: append latency p99 (ms)`,
    alone.result.appendP99,
    alone.cpu,
  );
  const capacity = await measure(workers, server.pid, () =>
    liveCapacity(
      workers,
      server.url,
      boundary(`capacity_${run}`),
      LIVE_SUBSCRIBERS,
      LIVE_CAPACITY_CLIENTS,
      SECONDS,
    ),
  );
  note(
    "live.capacity",
    ORISUN,
    `unconditional 1-event appends, ${LIVE_CAPACITY_CLIENTS} clients, while ${LIVE_SUBSCRIBERS} subscribers receive them (events/s)`,
    capacity.result,
    capacity.cpu,
  );
}

async function pubsubGroup(workers: Workers, server: Server, run: number): Promise<void> {
  const { result, cpu } = await measure(workers, server.pid, () =>
    pubsub(workers, server.url, `bench_${ID}_${run}`, 16, SECONDS),
  );
  note(
    "pubsub.rate",
    ORISUN,
    "pub/sub through one group of 4 members, 16 publishers (messages/s)",
    result.rate,
    cpu,
  );
  note("pubsub.p50", ORISUN, "pub/sub, same run: publish to receipt p50 (ms)", result.p50);
  note("pubsub.p99", ORISUN, "pub/sub, same run: publish to receipt p99 (ms)", result.p99);
}

/** The loaded boundary that paging reads, catch-up and COPY share across runs. */
interface Big {
  readonly server: Server;
  readonly schema: string;
  readonly boundary: string;
  readonly count: number;
}

async function loadBig(workers: Workers): Promise<Big> {
  const schema = `bench_${ID}_big`;
  const server = await postgresServer(schema);
  const name = boundary("big");
  const n = BIG.toLocaleString("en");
  console.log(`\nloading ${n} events into boundary ${name}`);
  const { result, cpu } = await measure(workers, server.pid, () =>
    load(workers, server.url, name, BIG),
  );
  note("load", ORISUN, `load in 1,000-event appends, ${n} events, once (events/s)`, result, cpu);
  if (!GIVEN_URL) {
    const { seconds, messages } = await publisherCatchUp(schema, name);
    console.log(
      `  JetStream publisher done ${seconds.toFixed(1)} s after the load ended; its stream holds ${messages.toLocaleString("en")} messages`,
    );
  }
  return { server, schema: GIVEN_URL ? GIVEN_SCHEMA : schema, boundary: name, count: BIG };
}

async function readGroups(workers: Workers, big: Big): Promise<void> {
  const n = big.count.toLocaleString("en");
  if (runs("reads")) {
    const { result, cpu } = await measure(workers, big.server.pid, () =>
      paging(workers, big.server.url, big.boundary, PAGE),
    );
    if (result.count !== big.count) throw new Error(`paged ${result.count} of ${big.count} events`);
    note(
      "paging",
      ORISUN,
      `paging reads, GetEvents pages of ${PAGE.toLocaleString("en")}, ${n} events (events/s)`,
      result.rate,
      cpu,
    );
    // The load's tags: 100 accounts, 1% of the events each. A decision about a new entity reads
    // a tag nobody has; ANALYZE lists the accounts, so PostgreSQL estimates any other tag at 0.5%
    // ("Reading a rare tag" in the README).
    for (const [key, what, value] of [
      ["lookup.none", "a tag nobody has", undefined],
      ["lookup.common", "a tag on 1% of them", "acct-7"],
    ] as const) {
      const r = await lookups(workers, big.server.url, big.boundary, value, 10, SECONDS);
      if (value === undefined && r.perCall !== 0) throw new Error("a tag nobody has matched");
      const label = `GetEvents, a page of 10 for ${what}, ${n} events`;
      note(`${key}.p50`, ORISUN, `${label}: p50 (ms)`, r.p50);
      note(`${key}.p99`, ORISUN, `${label}: p99 (ms)`, r.p99);
    }
  }
  if (runs("catchup")) {
    const { result, cpu } = await measure(workers, big.server.pid, () =>
      catchUp(workers, big.server.url, big.boundary, big.count),
    );
    note("catchup", ORISUN, `catch-up subscription over ${n} events (events/s)`, result, cpu);
    // The same with a client that lets the server send more than 64 KiB ahead (worker.ts).
    const window = await measure(workers, big.server.pid, () =>
      catchUp(workers, big.server.url, big.boundary, big.count, CATCHUP_WINDOW),
    );
    note(
      "catchup.window",
      ORISUN,
      `catch-up subscription over ${n} events, client stream window 4 MiB (events/s)`,
      window.result,
      window.cpu,
    );
  }
  if (runs("references")) {
    const { result, cpu } = await measure(workers, undefined, () =>
      copyRate(PG_URL, big.schema, big.boundary, big.count),
    );
    note(
      "copy",
      REFERENCE,
      `PostgreSQL COPY … TO STDOUT of the same ${n} events via psql (rows/s)`,
      result,
      { ...cpu, generator: undefined },
    );
  }
}

async function embeddedGroup(workers: Workers, run: number): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "orisun-bench-embedded-"));
  const server = await startServer({ ORISUN_DATA_DIR: dir });
  try {
    for (const clients of [1, 16, 64]) {
      const { result, cpu } = await measure(workers, server.pid, () =>
        appends(workers, server.url, {
          boundary: `cond${clients}_${run}`,
          clients,
          eventsPerAppend: 1,
          conditional: true,
          seconds: SECONDS,
        }),
      );
      note(
        `embedded${clients}`,
        EMBEDDED,
        `embedded (PGlite), conditional 1-event appends, ${clientCount(clients)} (events/s)`,
        result,
        cpu,
      );
    }
    note(
      "disksync",
      REFERENCE,
      "fsyncs/s of the embedded folder's disk, 8 kB write + fsync one at a time",
      diskSyncRate(dir, SECONDS),
    );
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const alone = mkdtempSync(join(tmpdir(), "orisun-bench-pglite-"));
  try {
    const cost = await pgliteCommitCost(alone, SECONDS);
    note(
      "pglite.shipped",
      EMBEDDED,
      "PGlite alone, 1-row commit, as shipped: no sync (ms)",
      cost.shipped,
    );
    note("pglite.durable", EMBEDDED, "PGlite alone, 1-row commit, WAL fsynced (ms)", cost.durable);
  } finally {
    rmSync(alone, { recursive: true, force: true });
  }
}

async function pgbenchGroup(workers: Workers, run: number): Promise<void> {
  const bench = await Pgbench.create(PG_URL, `bench_${ID}_pgbench_${run}`);
  try {
    for (const [clients, rows] of [
      [1, 1],
      [16, 1],
      [64, 1],
      [16, 100],
    ] as const) {
      const { result, cpu } = await measure(workers, undefined, () =>
        bench.rowsPerSecond(clients, rows, SECONDS),
      );
      const what =
        rows === 1 ? "1 row per transaction" : `${rows}-row INSERT … SELECT per transaction`;
      note(
        `pgbench${rows}x${clients}`,
        REFERENCE,
        `pgbench, ${what}, ${clientCount(clients)}, lean table: bigserial key + unique uuid (rows/s)`,
        result,
        { ...cpu, generator: undefined },
      );
    }
    for (const clients of [1, 16, 64]) {
      const { result, cpu } = await measure(workers, undefined, () =>
        bench.rowsPerSecond(clients, 1, SECONDS, "orisun"),
      );
      note(
        `pgbench1x${clients}.orisun`,
        REFERENCE,
        `pgbench, 1 row per transaction, ${clientCount(clients)}, orisun_events' columns and 4 indexes (rows/s)`,
        result,
        { ...cpu, generator: undefined },
      );
    }
    // One boundary's appends commit one transaction at a time (its row lock keeps positions
    // gapless and in order): its ceiling is one connection inserting the largest batch that 16
    // clients of 100-event appends make, into a table of Orisun's shape.
    const serial = await measure(workers, undefined, () =>
      bench.rowsPerSecond(1, 1_600, SECONDS, "orisun"),
    );
    note(
      "pgbench1600x1.orisun",
      REFERENCE,
      "pgbench, 1,600-row INSERT … SELECT per transaction, 1 client, orisun_events' columns and 4 indexes (rows/s)",
      serial.result,
      { ...serial.cpu, generator: undefined },
    );
  } finally {
    await bench.drop();
  }
}

/** Emmett's group on its own, when the append group does not run (it measures Emmett itself). */
async function emmettGroup(workers: Workers, run: number): Promise<void> {
  const emmett = await Emmett.create(PG_URL, `bench_${ID}_emmett_${run}`);
  try {
    for (const clients of [1, 16, 64]) await measureEmmett(workers, emmett, clients);
  } finally {
    await emmett.drop();
  }
}

/** Emmett's appends at `clients`, on a database as quiet as Orisun's appends had. */
async function measureEmmett(workers: Workers, emmett: Emmett, clients: number): Promise<void> {
  if (!GIVEN_URL) await quiesce(PG_URL);
  const { result, cpu } = await measure(workers, undefined, () => emmett.appends(clients, SECONDS));
  note(
    `emmett${clients}`,
    REFERENCE,
    `Emmett 0.42 on PostgreSQL, 1-event appends with expected version, ${clientCount(clients)} (events/s)`,
    result.rate,
    { ...cpu, generator: result.cpuPercent },
  );
}

/** Server CPU in µs per call, from its CPU % of one core and the calls per second. */
const cpuPerCall = (serverPercent: number, callsPerSecond: number) =>
  (serverPercent / 100 / callsPerSecond) * 1e6;

/** A reference handler (server.ts's REFERENCE_HANDLERS) running, with its key and description. */
interface ReferenceHandler {
  readonly key: string;
  readonly what: string;
  readonly server: Server;
}

/**
 * The floor the stack sets: trivial-server.ts, a connect-fastify SaveEvents handler that answers
 * at once; the same with `SELECT 1` on PostgreSQL; and with that and a JetStream publish (the
 * floor of a lone append). And bare-server.ts, a bare node:http2 handler that commits one row per
 * SaveEvents: the least any durable append served from Node costs, without Connect or Fastify;
 * and the same handler running Orisun's own append statement (at 1 client only): the most a lone
 * append with that statement can make on this stack; and the same handler appending through
 * Orisun's store: the most appends through it can make. Started together, so that each can be
 * measured right after Orisun's appends at the same client count: this machine's speed drifts
 * within minutes.
 */
async function startReferenceHandlers(): Promise<ReferenceHandler[]> {
  if (GIVEN_URL) return [];
  const handlers: ReferenceHandler[] = [];
  try {
    const keys: ReferenceName[] = [
      "trivial",
      "select1",
      "floor",
      "bare-commit",
      "bare-append",
      "bare-store",
    ];
    for (const key of keys) {
      const { what, start } = REFERENCE_HANDLERS[key];
      handlers.push({ key, what, server: await start(PG_URL, NATS_URL) });
    }
  } catch (error) {
    await stopReferenceHandlers(handlers);
    throw error;
  }
  return handlers;
}

async function stopReferenceHandlers(handlers: readonly ReferenceHandler[]): Promise<void> {
  for (const { server } of handlers) await server.stop();
}

/** The same conditional 1-event appends against each reference handler, and its CPU per call. */
async function measureReferenceHandlers(
  workers: Workers,
  handlers: readonly ReferenceHandler[],
  clients: number,
): Promise<void> {
  for (const { key, what, server } of handlers) {
    // One statement per call on one boundary: more clients would only queue for its lock.
    if (key === "bare-append" && clients !== 1) continue;
    if (key === "bare-store") {
      // A fresh process: at 16 clients its first seconds ran at 0.6x of its third (JIT), while
      // Orisun's server was warmed by the load and the workloads before.
      await appends(workers, server.url, {
        boundary: `warm_${clients}`,
        clients,
        eventsPerAppend: 1,
        conditional: true,
        seconds: 3,
      });
    }
    const { result, cpu } = await measure(workers, server.pid, () =>
      appends(workers, server.url, {
        boundary: `trivial_${clients}`,
        clients,
        eventsPerAppend: 1,
        conditional: true,
        seconds: SECONDS,
      }),
    );
    note(`${key}${clients}`, REFERENCE, `${what}, ${clientCount(clients)} (calls/s)`, result, cpu);
    note(
      `cpu.${key}${clients}`,
      REFERENCE,
      `server CPU per call, ${what}, ${clientCount(clients)} (µs)`,
      cpuPerCall(cpu.server ?? Number.NaN, result),
      cpu,
    );
  }
}

/** The reference handlers alone (BENCH_ONLY=references without append). */
async function trivialGroup(workers: Workers): Promise<void> {
  const handlers = await startReferenceHandlers();
  try {
    for (const clients of [1, 16, 64]) await measureReferenceHandlers(workers, handlers, clients);
  } finally {
    await stopReferenceHandlers(handlers);
  }
}

/** Export of a loaded boundary by the CLI, then its import into an empty store (PostgreSQL + NATS). */
async function backupGroup(workers: Workers, run: number): Promise<void> {
  if (GIVEN_URL) {
    console.log("  backup: skipped, it needs two stores of its own");
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), "orisun-bench-backup-"));
  const file = join(dir, "backup.ndjson");
  const n = BACKUP_EVENTS.toLocaleString("en");
  const name = `backup_${run}`;
  const source = await postgresServer(`bench_${ID}_backup_source_${run}`);
  try {
    await load(workers, source.url, name, BACKUP_EVENTS);
    const { result, cpu } = await measure(workers, source.pid, () =>
      exportRate(source.url, name, file, BACKUP_EVENTS),
    );
    note("export", ORISUN, `orisun export, ${n} events to NDJSON (events/s)`, result, cpu);
  } finally {
    await source.stop();
  }
  const target = await postgresServer(`bench_${ID}_backup_target_${run}`);
  try {
    const { result, cpu } = await measure(workers, target.pid, () =>
      importRate(target.url, file, BACKUP_EVENTS),
    );
    note(
      "import",
      ORISUN,
      `orisun import, ${n} events into an empty store (events/s)`,
      result,
      cpu,
    );
  } finally {
    await target.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function memoryGroup(workers: Workers): Promise<void> {
  if (GIVEN_URL) {
    console.log("\nmemory: skipped, it needs the server's pid (not available with BENCH_URL)");
    return;
  }
  console.log(
    `\nmemory: ${MEMORY_SECONDS} s of 16 conditional append clients + 10 live subscribers`,
  );
  const server = await postgresServer(`bench_${ID}_memory`);
  try {
    const pid = server.pid as number;
    const { result, cpu } = await measure(workers, pid, () =>
      memory(workers, server.url, pid, MEMORY_SECONDS),
    );
    const w = `${Math.round(result.window)} s`;
    const series = result.samples.map((s) => `${Math.round(s.at)} s: ${Math.round(s.rss)}`);
    console.log(`  server RSS (MiB) by time: ${series.join(", ")}`);
    note(
      "memory.rate",
      MEMORY,
      `memory run, ${MEMORY_SECONDS} s once, 16 append clients + 10 subscribers (events/s)`,
      result.appendRate,
      cpu,
    );
    note("rss.first", MEMORY, `server RSS, median over the second ${w} (MiB)`, result.first);
    note("rss.last", MEMORY, `server RSS, median over the last ${w} (MiB)`, result.last);
    note("rss.ratio", MEMORY, "server RSS, last / first", result.last / result.first);
  } finally {
    await server.stop();
  }
}

function verdict(ratio: number, target: NonNullable<Comparison["target"]>): string {
  const met =
    target.op === ">="
      ? ratio >= target.ratio
      : target.op === "<"
        ? ratio < target.ratio
        : ratio <= target.ratio;
  return Number.isFinite(ratio) ? `${target.text}: ${met ? "met" : "missed"}` : `${target.text}: —`;
}

function table(): string {
  const lines = [
    "| workload | median | reference (median) | ratio | target | CPU % of one core: load generator / server / machine |",
    "| --- | ---: | --- | ---: | --- | --- |",
  ];
  const ordered = [...results.entries()].sort((a, b) => a[1].section - b[1].section);
  for (const [key, r] of ordered) {
    const value = median(r.values);
    const cpu = r.cpu.length > 0 ? formatCpu(r.cpu) : "";
    const mine = comparisons.filter((c) => c.key === key);
    if (mine.length === 0) lines.push(`| ${r.label} | ${format(value)} | — | — | — | ${cpu} |`);
    for (const c of mine) {
      const ref =
        "key" in c.reference
          ? median(results.get(c.reference.key)?.values ?? [])
          : c.reference.value;
      const ratio = value / ref;
      const refText = `${c.reference.name}: ${Number.isNaN(ref) ? "not run" : format(ref)}`;
      const ratioText = Number.isFinite(ratio) ? `${ratio.toFixed(2)}×` : "—";
      lines.push(
        `| ${r.label} | ${format(value)} | ${refText} | ${ratioText} | ${c.target ? verdict(ratio, c.target) : "—"} | ${cpu} |`,
      );
    }
  }
  return lines.join("\n");
}

async function main(): Promise<void> {
  const about = await machine();
  console.log(`Orisun benchmark — ${about}`);
  console.log(
    `${RUNS} runs (medians), ${SECONDS} s per timed workload, ${WORKERS} load-generator processes${GIVEN_URL ? `, server at ${GIVEN_URL}` : ""}; after each result: CPU % of one core used by load generator / server / whole machine`,
  );
  if (runs("emmett")) ensureEmmett();
  const workers = Workers.start(WORKERS);
  let big: Big | undefined;
  let plansTable: string | undefined;
  try {
    if (runs("reads") || runs("catchup") || runs("references")) big = await loadBig(workers);
    const repeated = GROUPS.some((g) => g !== "memory" && g !== "plans" && runs(g));
    for (let run = 0; run < (repeated ? RUNS : 0); run++) {
      console.log(`\nrun ${run + 1} of ${RUNS}`);
      if (runs("append") || runs("live") || runs("pubsub")) {
        const server = await postgresServer(`bench_${ID}_${run}`);
        try {
          if (runs("append")) await appendGroup(workers, server, run);
          if (runs("live")) await liveGroup(workers, server, run);
          if (runs("pubsub")) await pubsubGroup(workers, server, run);
        } finally {
          await server.stop();
        }
      }
      if (runs("auth") && GIVEN_URL) console.log("  auth: skipped, it spawns its own servers");
      if (runs("auth") && !GIVEN_URL) await authGroup(workers, run);
      if (big) await readGroups(workers, big);
      if (runs("embedded") && GIVEN_URL)
        console.log("  embedded: skipped, it spawns its own server");
      if (runs("embedded") && !GIVEN_URL) await embeddedGroup(workers, run);
      if (runs("workers") && !GIVEN_URL) await workersGroup(workers, run);
      if (runs("references")) await pgbenchGroup(workers, run);
      if (runs("references") && !runs("append")) await trivialGroup(workers);
      if (runs("emmett") && !runs("append")) await emmettGroup(workers, run);
      if (runs("backup")) await backupGroup(workers, run);
    }
    if (runs("memory")) await memoryGroup(workers);
    if (runs("plans")) plansTable = await plansGroup();
  } finally {
    await big?.server.stop();
    await workers.close();
  }
  console.log(
    `\nOrisun benchmark: ${about}. Median of ${RUNS} runs, ${SECONDS} s per timed workload; server, PostgreSQL, NATS JetStream and ${WORKERS} load-generator processes on the same machine. CPU column: load generator = the worker processes (for Emmett: its own process, library and clients together; pgbench and psql: not measured), server = the Orisun process, machine = all cores busy (${CORES * 100}% = every core).\n`,
  );
  if (results.size > 0) console.log(table());
  if (plansTable) console.log(`\n${plansTable}`);
}

/** Query plans at BENCH_CATCHUP_EVENTS events: its own table, in milliseconds per query. */
async function plansGroup(): Promise<string> {
  console.log(`\nquery plans at ${BIG.toLocaleString("en")} events`);
  const timings = await queryPlans(PG_URL, `bench_${ID}_plans`, BIG);
  const lines = [
    `Query plans over ${BIG.toLocaleString("en")} events (EXPLAIN ANALYZE, median of 5; pages of 1,000):`,
    "",
    "| query shape | ms | plan |",
    "| --- | ---: | --- |",
  ];
  for (const t of timings) {
    console.log(`  ${t.shape}: ${t.ms.toFixed(2)} ms  ${t.plan}`);
    lines.push(`| ${t.shape} | ${t.ms.toFixed(2)} | ${t.plan} |`);
  }
  return lines.join("\n");
}

await main();
