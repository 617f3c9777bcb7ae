/**
 * An A/B of two servers that sees one machine state: both run at once, on PostgreSQL + NATS in
 * schemas of their own, and the load alternates between them in short bursts (A then B, then B
 * then A, …). On a shared virtual machine whose speed moves by 2× within minutes, whole runs
 * one after the other compare machine states more than builds; bursts a few seconds apart do not.
 * Prints each side's server CPU per append and appends/s, and the pairwise ratios B/A (medians
 * over the rounds, and in how many rounds B was lower or higher).
 *
 *   npm run build && node dist/bench/interleaved.js A B
 *
 * A and B: a checkout with a built dist/ (a git worktree of another commit, say), "." for this
 * one, a reference handler of server.ts's REFERENCE_HANDLERS ("trivial" for the trivial
 * connect-fastify handler, "select1" and "floor" for that handler running SELECT 1 and then a
 * JetStream publish per call, "bare" for a bare node:http2 server answering at once, "bare-commit"
 * for that server committing one row per SaveEvents), or "pgbench" for pgbench
 * inserting the same number of rows per transaction into a lean table (no server: no CPU column).
 * Settings: AB_CLIENTS (1), AB_EVENTS per append (1), AB_BURST_SECONDS (2), AB_ROUNDS (20),
 * AB_ENV_A and AB_ENV_B (JSON, more server environment), AB_AUTH_B=1 (calls to B carry a bench
 * writer's password; start B with ORISUN_AUTH=on and ORISUN_ADMIN_PASSWORD=bench-admin-password
 * in AB_ENV_B), AB_LOAD_PROCESSES (1: load-generator processes, each with its own connection to
 * each server; give 2 or more to spread the load over a server's ORISUN_WORKERS), AB_RATE
 * (appends/s offered to each side; unset: as fast as it answers), BENCH_PG_URL, BENCH_NATS_URL.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { benchWriter } from "./auth-cost.js";
import { Pgbench } from "./references.js";
import {
  isReferenceName,
  processCpuSeconds,
  REFERENCE_HANDLERS,
  type Server,
  startServer,
} from "./server.js";
import { NATS_URL, PG_URL, removeServerData } from "./server-data.js";
import { Workers } from "./workers.js";
import { appends, median } from "./workloads.js";

const CLIENTS = Number(process.env.AB_CLIENTS ?? 1);
const EVENTS = Number(process.env.AB_EVENTS ?? 1);
const BURST = Number(process.env.AB_BURST_SECONDS ?? 2);
const ROUNDS = Number(process.env.AB_ROUNDS ?? 20);
/**
 * Appends/s offered to both sides alike, below what either can take: the same arrivals make the
 * same group-commit batches, so the CPU per append compares the code, not the batching a faster
 * side earns itself. Unset: each side as fast as it answers.
 */
const RATE = process.env.AB_RATE === undefined ? undefined : Number(process.env.AB_RATE);
if (RATE !== undefined && !(RATE > 0 && Number.isFinite(RATE))) {
  console.error(`AB_RATE: must be appends/s above 0, got "${process.env.AB_RATE}"`);
  process.exit(2);
}

interface Side {
  readonly name: string;
  /** The server's process; none for pgbench, whose rounds have no CPU per append. */
  readonly pid: number | undefined;
  readonly rounds: { cpuMicros: number; rate: number }[];
  /** Events/s of `seconds` of appends to `boundary`. */
  burst(boundary: string, seconds: number): Promise<number>;
  cleanup(): Promise<void>;
}

function serverSide(name: string, server: Server, authorization?: string) {
  return {
    name,
    pid: server.pid,
    rounds: [],
    burst: (boundary: string, seconds: number) =>
      appends(workers, server.url, {
        boundary,
        clients: CLIENTS,
        eventsPerAppend: EVENTS,
        conditional: true,
        seconds,
        ...(RATE === undefined ? {} : { rate: RATE }),
        ...(authorization === undefined ? {} : { authorization }),
      }),
  };
}

async function start(name: string, index: number): Promise<Side> {
  const schema = `bench_ab_${process.pid}_${index}`;
  if (name === "pgbench") {
    const pgbench = await Pgbench.create(PG_URL, schema);
    return {
      name,
      pid: undefined,
      rounds: [],
      burst: (_, seconds) => pgbench.rowsPerSecond(CLIENTS, EVENTS, seconds, "lean", false),
      cleanup: () => pgbench.drop(),
    };
  }
  if (isReferenceName(name)) {
    const server = await REFERENCE_HANDLERS[name].start(PG_URL, NATS_URL);
    return { ...serverSide(name, server), cleanup: () => server.stop() };
  }
  const root = `${resolve(name)}/`;
  const dir = mkdtempSync(join(tmpdir(), "orisun-ab-"));
  const extra = process.env[index === 0 ? "AB_ENV_A" : "AB_ENV_B"];
  const removeData = async () => {
    rmSync(dir, { recursive: true, force: true });
    await removeServerData(PG_URL, NATS_URL, schema);
  };
  let server: Server | undefined;
  let authorization: string | undefined;
  try {
    server = await startServer(
      {
        ORISUN_PG_URL: PG_URL,
        ORISUN_PG_SCHEMA: schema,
        ORISUN_NATS_URL: NATS_URL,
        ORISUN_DATA_DIR: dir,
        ...(extra ? (JSON.parse(extra) as Record<string, string>) : {}),
      },
      root,
    );
    if (index === 1 && process.env.AB_AUTH_B === "1") authorization = await benchWriter(server.url);
  } catch (error) {
    // Not a side yet, so nobody else stops it or removes what it made.
    await server?.stop();
    await removeData();
    throw error;
  }
  const up = server;
  return {
    ...serverSide(name, up, authorization),
    async cleanup() {
      await up.stop();
      await removeData();
    },
  };
}

const [a, b] = process.argv.slice(2);
if (a === undefined || b === undefined) {
  console.error(
    'usage: node dist/bench/interleaved.js A B   (a built checkout, ".", trivial, select1, floor, bare, bare-commit or pgbench)',
  );
  process.exit(2);
}
const workers = Workers.start(Number(process.env.AB_LOAD_PROCESSES ?? 1));
const sides: Side[] = [];
try {
  // One at a time, so that A is stopped and removed (finally) when B fails to start.
  sides.push(await start(a, 0));
  sides.push(await start(b, 1));
  for (const side of sides) await side.burst("warm", 3);
  for (let round = 0; round < ROUNDS; round++) {
    for (const side of round % 2 === 0 ? sides : [...sides].reverse()) {
      const cpuSeconds = () => (side.pid === undefined ? Number.NaN : processCpuSeconds(side.pid));
      const cpu0 = cpuSeconds();
      const started = performance.now();
      const rate = await side.burst(`round${round}`, BURST);
      const cpu = cpuSeconds() - cpu0;
      const appended = (rate / EVENTS) * ((performance.now() - started) / 1_000);
      side.rounds.push({ cpuMicros: (cpu / appended) * 1e6, rate });
    }
  }
  const [sa, sb] = sides as [Side, Side];
  const count = (xs: number[], f: (x: number) => boolean) => xs.filter(f).length;
  /** The middle half of the pairwise ratios: how far one round's ratio may be from another's. */
  const quartiles = (xs: number[]) => {
    const sorted = xs.filter((x) => !Number.isNaN(x)).sort((x, y) => x - y);
    const at = (q: number) => sorted[Math.floor(q * (sorted.length - 1))]?.toFixed(3);
    return `quartiles ${at(0.25)}–${at(0.75)}`;
  };
  for (const [i, side] of sides.entries()) {
    const cpu = median(side.rounds.map((r) => r.cpuMicros));
    console.log(
      `${i === 0 ? "A" : "B"} (${side.name}): ` +
        (Number.isNaN(cpu) ? "" : `server CPU per append ${Math.round(cpu)} µs, `) +
        `${Math.round(median(side.rounds.map((r) => r.rate)))} events/s (medians of ${ROUNDS} bursts)`,
    );
  }
  const cpu = sb.rounds.map((r, i) => r.cpuMicros / (sa.rounds[i]?.cpuMicros ?? Number.NaN));
  const rate = sb.rounds.map((r, i) => r.rate / (sa.rounds[i]?.rate ?? Number.NaN));
  if (!Number.isNaN(median(cpu)))
    console.log(
      `B/A server CPU per append: ${median(cpu).toFixed(3)}× (pairwise median, ${quartiles(cpu)}; B lower in ${count(cpu, (x) => x < 1)} of ${ROUNDS})`,
    );
  console.log(
    `B/A events/s: ${median(rate).toFixed(3)}× (pairwise median, ${quartiles(rate)}; B higher in ${count(rate, (x) => x > 1)} of ${ROUNDS})`,
  );
} finally {
  await Promise.all(sides.map((side) => side.cleanup()));
  await workers.close();
}
