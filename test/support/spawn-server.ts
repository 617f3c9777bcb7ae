import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createServer } from "node:net";
import { resolve } from "node:path";

export interface SpawnedServer {
  readonly url: string;
  readonly port: number;
  readonly process: ChildProcess;
  /** Everything the server logged so far. */
  output(): string;
  /** SIGTERM and wait for exit; resolves to the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * A port nothing listens on, from below the kernel's ephemeral range. A port from listen(0)
 * comes from that range, which the kernel also hands out to every outgoing connection: between
 * this probe closing and the server binding it, a test's connection to PostgreSQL or NATS can
 * take it (EADDRINUSE). Below the range only another probe can pick the same port, and it binds
 * to check.
 */
export async function freePort(): Promise<number> {
  const low = 10_000;
  const high = ephemeralLow();
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = low + Math.floor(Math.random() * (high - low));
    if (await bindable(port)) return port;
  }
  throw new Error(`no free port found in ${low}-${high - 1}`);
}

/** The lowest port of the kernel's ephemeral range. */
function ephemeralLow(): number {
  try {
    const low = Number(
      readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").split(/\s+/)[0],
    );
    if (low > 11_000) return low;
  } catch {
    // Not Linux.
  }
  return 49_152; // IANA's
}

function bindable(port: number): Promise<boolean> {
  return new Promise((done) => {
    const server = createServer();
    server.once("error", () => done(false));
    server.listen(port, "127.0.0.1", () => server.close(() => done(true)));
  });
}

/** Generous: PGlite's start alone takes seconds of CPU, and the machine may be busy. */
const START_TIMEOUT_MS = 60_000;

/** Every server this test process started and has not seen exit. */
const running = new Set<ChildProcess>();
// A test that fails, times out or forgets its stop() must not leave a server listening after
// the test process ends.
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/**
 * Starts dist/server/main.js (built by the global setup) and waits until it listens.
 * `startTimeoutMs`: a first start on a new PGlite folder runs initdb, which a busy machine slows.
 */
export async function spawnServer(
  env: Record<string, string>,
  args: string[] = [],
  startTimeoutMs = START_TIMEOUT_MS,
): Promise<SpawnedServer> {
  const port = env.ORISUN_PORT ? Number(env.ORISUN_PORT) : await freePort();
  const child = spawn(process.execPath, [resolve("dist/server/main.js"), ...args], {
    env: {
      PATH: process.env.PATH ?? "",
      ORISUN_LOG_LEVEL: "info",
      // One process, whose pid is the server's, unless a test asks for workers (the default with
      // PostgreSQL and NATS is one per core).
      ORISUN_WORKERS: "1",
      ...env,
      ORISUN_PORT: String(port),
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  child.once("exit", () => running.delete(child));
  let log = "";
  child.stdout?.on("data", (d: Buffer) => {
    log += d.toString();
  });
  child.stderr?.on("data", (d: Buffer) => {
    log += d.toString();
  });
  const exited = new Promise<number | null>((done) => child.once("exit", (code) => done(code)));
  await new Promise<void>((ready, fail) => {
    const timer = setTimeout(() => {
      // It may still come up later and keep the port: end it now.
      child.kill("SIGKILL");
      fail(new Error(`server did not start in ${startTimeoutMs / 1000} s:\n${log}`));
    }, startTimeoutMs);
    const check = () => {
      if (log.includes("Orisun listening")) {
        clearTimeout(timer);
        ready();
      }
    };
    child.stdout?.on("data", check);
    void exited.then((code) => {
      clearTimeout(timer);
      fail(new Error(`server exited with ${code} before listening:\n${log}`));
    });
  });
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    process: child,
    output: () => log,
    async stop(signal = "SIGTERM") {
      if (child.exitCode !== null) return child.exitCode;
      child.kill(signal);
      return exited;
    },
  };
}
