/**
 * The server under test in its own process, as in production, and what /proc says about it: its
 * resident memory and CPU time, and the whole machine's CPU time.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { cpus } from "node:os";
import { fileURLToPath } from "node:url";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { EventStore } from "../gen/orisun/v1/eventstore_pb.js";

/** The repository root (this file runs from dist/bench/). */
export const ROOT = fileURLToPath(new URL("../../", import.meta.url));

export interface Server {
  readonly url: string;
  /** Undefined for a server started by hand (BENCH_URL). */
  readonly pid: number | undefined;
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function freePort(): Promise<number> {
  return new Promise((done) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => done(typeof address === "object" && address ? address.port : 0));
    });
  });
}

/**
 * Spawns dist/server/main.js with `env` (plus BENCH_SERVER_NODE_OPTIONS) and waits until it
 * answers; `root` is the checkout whose build runs (this one unless given).
 */
export function startServer(env: Record<string, string>, root = ROOT): Promise<Server> {
  return spawnAndWait(`${root}dist/server/main.js`, (port) => ({
    ORISUN_LOG_LEVEL: "warn",
    ORISUN_PORT: String(port),
    // One process unless asked: memory and CPU are read from the spawned pid (and its children).
    ORISUN_WORKERS: "1",
    ...env,
  }));
}

/**
 * The trivial connect-fastify server of trivial-server.ts, for the CPU-per-call reference; with
 * `pgUrl`, each SaveEvents first runs `SELECT 1` there, and with `natsUrl` too it then publishes
 * to JetStream (without waiting for an ack).
 */
export function startTrivialServer(pgUrl?: string, natsUrl?: string): Promise<Server> {
  return spawnAndWait(`${ROOT}dist/bench/trivial-server.js`, (port) => ({
    PORT: String(port),
    ...(pgUrl && { PG_URL: pgUrl }),
    ...(natsUrl && { NATS_URL: natsUrl }),
  }));
}

/**
 * The bare node:http2 server of bare-server.ts: any gRPC call answered at once; with `pgUrl`, each
 * SaveEvents first commits one row to a lean table, or runs Orisun's append statement instead
 * ("statement"), or hands the request to Orisun's store ("store").
 */
export function startBareServer(pgUrl?: string, orisun?: "statement" | "store"): Promise<Server> {
  return spawnAndWait(`${ROOT}dist/bench/bare-server.js`, (port) => ({
    PORT: String(port),
    ...(pgUrl && { PG_URL: pgUrl }),
    ...(orisun === "statement" && { BARE_APPEND: "1" }),
    ...(orisun === "store" && { BARE_STORE: "1" }),
  }));
}

/**
 * The reference handlers by name, for the table (run.ts) and the A/B (interleaved.ts): what each
 * is, and how to start it against the bench's PostgreSQL and NATS.
 */
export const REFERENCE_HANDLERS = {
  trivial: {
    what: "a trivial connect-fastify SaveEvents handler",
    start: () => startTrivialServer(),
  },
  select1: {
    what: "a connect-fastify SaveEvents handler that runs SELECT 1",
    start: (pgUrl: string) => startTrivialServer(pgUrl),
  },
  floor: {
    what: "a connect-fastify SaveEvents handler that runs SELECT 1, then publishes to JetStream",
    start: (pgUrl: string, natsUrl: string) => startTrivialServer(pgUrl, natsUrl),
  },
  bare: {
    what: "a bare node:http2 SaveEvents handler that answers at once",
    start: () => startBareServer(),
  },
  "bare-commit": {
    what: "a bare node:http2 SaveEvents handler that commits one row (INSERT, autocommit)",
    start: (pgUrl: string) => startBareServer(pgUrl),
  },
  "bare-append": {
    what: "a bare node:http2 SaveEvents handler that runs Orisun's append statement (one client)",
    start: (pgUrl: string) => startBareServer(pgUrl, "statement"),
  },
  "bare-store": {
    what: "a bare node:http2 SaveEvents handler that appends through Orisun's store",
    start: (pgUrl: string) => startBareServer(pgUrl, "store"),
  },
} satisfies Record<
  string,
  { what: string; start(pgUrl: string, natsUrl: string): Promise<Server> }
>;

export type ReferenceName = keyof typeof REFERENCE_HANDLERS;

export const isReferenceName = (name: string): name is ReferenceName =>
  Object.hasOwn(REFERENCE_HANDLERS, name);

/** Spawns `script` (a path) on a free port and waits until it answers. */
async function spawnAndWait(
  script: string,
  env: (port: number) => Record<string, string>,
): Promise<Server> {
  const port = await freePort();
  const child: ChildProcess = spawn(process.execPath, [script], {
    // Every spawned server gets BENCH_SERVER_NODE_OPTIONS: Orisun's and the reference handlers.
    env: {
      PATH: process.env.PATH ?? "",
      NODE_OPTIONS: process.env.BENCH_SERVER_NODE_OPTIONS ?? "",
      ...env(port),
    },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const exited = new Promise((r) => child.once("exit", r));
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitUntilServing(url, child);
  } catch (error) {
    // One that is up but never answered (180 s) would outlive the bench.
    child.kill("SIGKILL");
    await exited;
    throw error;
  }
  return {
    url,
    pid: child.pid,
    async stop() {
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** A server started by hand: its storage and lifetime are its own business. */
export async function givenServer(url: string): Promise<Server> {
  await waitUntilServing(url);
  return { url, pid: undefined, stop: async () => {} };
}

async function waitUntilServing(url: string, child?: ChildProcess): Promise<void> {
  const probe = createClient(EventStore, createGrpcTransport({ baseUrl: url }));
  // A first start on a new PGlite folder runs initdb: over a minute on a loaded machine.
  const deadline = Date.now() + 180_000;
  for (;;) {
    try {
      await probe.getEvents({ boundary: "bench_probe", count: 1 });
      return;
    } catch (error) {
      // A server with authentication on answers, which is all this asks.
      if (error instanceof ConnectError && error.code === Code.Unauthenticated) return;
      if (child?.exitCode != null) throw new Error(`server exited with ${child.exitCode}`);
      if (Date.now() > deadline) throw error;
      await sleep(100);
    }
  }
}

/** A child that exits between the listing and the read counts nothing. */
function livingCpuSeconds(pid: number): number {
  try {
    return processCpuSeconds(pid);
  } catch {
    return 0;
  }
}

/** VmRSS of a process, in MiB. */
export function rssMiB(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return match ? Number(match[1]) / 1024 : Number.NaN;
}

const TICKS_PER_SECOND = Number(spawnSync("getconf", ["CLK_TCK"]).stdout?.toString().trim()) || 100;

/**
 * CPU seconds (user + system) a process and its living children (ORISUN_WORKERS) have used so
 * far. A worker that died meanwhile takes its seconds with it: runs that kill none stay exact.
 */
export function processCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const own = (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
  const children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8")
    .split(" ")
    .filter(Boolean)
    .map(Number);
  return own + children.reduce((sum, child) => sum + livingCpuSeconds(child), 0);
}

/**
 * The main thread's (the event loop's) time on a core and time runnable but waiting for one, in
 * seconds so far (/proc/<pid>/task/<pid>/schedstat): together, how busy the event loop was.
 */
export function mainThreadSchedule(pid: number): { running: number; waiting: number } {
  const [running, waiting] = readFileSync(`/proc/${pid}/task/${pid}/schedstat`, "utf8")
    .trim()
    .split(" ")
    .map(Number);
  return { running: (running ?? 0) / 1e9, waiting: (waiting ?? 0) / 1e9 };
}

/** CPU seconds the whole machine has been busy (all but idle and iowait), summed over cores. */
export function machineBusySeconds(): number {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
  // user nice system idle iowait irq softirq steal; guest time is already counted in user.
  const ticks = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = ticks.reduce((a, b) => a + b, 0);
  const idle = (ticks[3] ?? 0) + (ticks[4] ?? 0);
  return (total - idle) / TICKS_PER_SECOND;
}

export const CORES = cpus().length;
